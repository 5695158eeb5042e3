"""The run-time fake-quantization path equals the straightforward computation, bit for bit.

The references below are the formulas of docs/method.md written out with out-of-place
operations and copies (``instance_view``, ``aminmax``, the ``[*S, G]`` distance table
and ``argmin``), as the quantizers computed them before the fast path.
"""
import pytest
import torch

from igq_plugin.grouping import range_distances

from ..reference import instance_view
from igq_plugin.quant import fake_quantize, qmax, quant_mode
from igq_plugin.quantizers import IGQQuantizer, PerTensorQuantizer, StaticGroupQuantizer, UpperBoundQuantizer
from igq_plugin.quant.primitives import qparams_from_bounds
from tests.quantizer_helpers import calibrate, quantized


def reference_fake_quantize(x, scale, zero, bits):
    codes = torch.clamp(torch.round(x * (1.0 / scale)) + zero, 0, qmax(bits))
    return (codes - zero) * scale


def reference_item_ranges(q, x):
    if q.kind == 'channel':
        view = instance_view(x, q.channel_dim, q.num_instances)  # [I, T, C] or [I, C, T]
        return tuple(torch.aminmax(view, dim=1 if q.channel_dim == -1 else 2))
    upper = x.reshape(-1, x.shape[-1]).amax(dim=-1)
    return torch.zeros_like(upper), upper


def reference_items(q, x, scale, zero):
    """Fake-quantize with per-item ``[I, C]`` / ``[R]`` parameters via copies."""
    if q.kind == 'channel':
        view = instance_view(x, q.channel_dim, q.num_instances)
        axis = 1 if q.channel_dim == -1 else 2
        return reference_fake_quantize(view, scale.unsqueeze(axis), zero.unsqueeze(axis),
                                       q.bits).reshape(x.shape)
    rows = x.reshape(-1, x.shape[-1])
    return reference_fake_quantize(rows, scale[:, None], zero[:, None], q.bits).reshape(x.shape)


def reference_cover(lower, upper, group_lower, group_upper):
    """Narrowest group of least clipping (ties: lower index); NaN items: narrowest."""
    clipped = ((upper[..., None] - group_upper).clamp(min=0)
               + (group_lower - lower[..., None]).clamp(min=0))
    least = clipped == clipped.amin(dim=-1, keepdim=True)
    width = (group_upper - group_lower).expand_as(clipped)
    index = torch.where(least, width, torch.inf).argmin(dim=-1)
    narrowest = (group_upper - group_lower).argmin()
    return torch.where(torch.isnan(lower) | torch.isnan(upper), narrowest, index)


def reference_igq(q, x):
    lower, upper = reference_item_ranges(q, x)
    if q.assignment == 'cover':
        index = reference_cover(lower, upper, *q.active_ranges())
    else:
        index = range_distances(lower, upper, *q.active_centres(), q.distance).argmin(dim=-1)
    scale, zero = qparams_from_bounds(*q.active_ranges(), q.bits)
    return reference_items(q, x, scale[index], zero[index])


def same_bits(a, b):
    """Same bits (the sign of zero included), NaN where the other has NaN.

    NaN payloads are not compared: torch's own kernels do not keep them either.
    """
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.isnan(), b.isnan()):
        return False
    bits = torch.int32 if a.dtype == torch.float32 else torch.int64
    return torch.equal(torch.where(a.isnan(), 0.0, a).view(bits),
                       torch.where(b.isnan(), 0.0, b).view(bits))




def activations(*shape, seed=0, channel_dim=-1):
    gen = torch.Generator().manual_seed(seed)
    channels = shape[channel_dim]
    bshape = [1] * len(shape)
    bshape[channel_dim] = channels
    width = torch.exp(torch.randn(bshape, generator=gen))
    return torch.randn(shape, generator=gen) * width + torch.randn(bshape, generator=gen)


# -- the primitive ---------------------------------------------------------------------
def special_values(x):
    flat = x.view(-1)
    flat[:8] = torch.tensor([float('nan'), float('inf'), -float('inf'), -0.0, 0.0,
                             -1e-30, 3e38, -3e38], dtype=x.dtype)
    return x


PARAM_LAYOUTS = {  # name: (x shape, parameter shape)
    'per-tensor': ((4, 33, 40), ()),
    'channels-last': ((4, 33, 40), (40,)),
    'instances-last': ((4, 33, 40), (4, 1, 40)),
    'channels-first': ((2, 12, 7, 9), (12, 1, 1)),
    'rows': ((3, 5, 17, 17), (3, 5, 17, 1)),
    'per-element': ((6, 10), (6, 10)),
}


@pytest.mark.parametrize('layout', PARAM_LAYOUTS)
@pytest.mark.parametrize('bits', [2, 4, 8, 16])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_inplace_fake_quantize_is_the_formula_bit_for_bit(layout, bits, dtype):
    shape, pshape = PARAM_LAYOUTS[layout]
    gen = torch.Generator().manual_seed(bits)
    x = special_values(torch.randn(shape, generator=gen, dtype=dtype) * 3)
    lower = -torch.rand(pshape, generator=gen, dtype=dtype) * 2
    upper = torch.rand(pshape, generator=gen, dtype=dtype) * 4
    scale, zero = qparams_from_bounds(lower, upper, bits)
    expected = reference_fake_quantize(x, scale, zero, bits)
    with torch.no_grad():
        out = fake_quantize(x, scale, zero, bits)
    assert same_bits(out, expected)
    # without autograd at all (inference mode) and with a non-integer zero point
    with torch.inference_mode():
        assert same_bits(fake_quantize(x, scale, zero + 0.3, bits),
                         reference_fake_quantize(x, scale, zero + 0.3, bits))


@pytest.mark.parametrize('zero', [0.0, -0.0])
@pytest.mark.parametrize('pshape', [(), (3, 5, 17, 1)])
def test_inplace_fake_quantize_with_zero_point_0(zero, pshape):
    gen = torch.Generator().manual_seed(0)
    x = special_values(torch.randn(3, 5, 17, 17, generator=gen))
    scale = torch.rand(pshape, generator=gen) + 0.01
    zero = torch.tensor(zero)
    with torch.no_grad():
        out = fake_quantize(x, scale, zero, 4)
    assert same_bits(out, reference_fake_quantize(x, scale, zero, 4))


def test_inplace_path_keeps_input_and_layout():
    x = activations(2, 6, 8, 16).permute(0, 3, 1, 2)  # non-contiguous [2, 16, 6, 8]
    before = x.clone()
    scale, zero = qparams_from_bounds(torch.tensor(-1.0), torch.tensor(2.0), 4)
    with torch.no_grad():
        out = fake_quantize(x, scale, zero, 4)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    assert out.stride() == x.stride()  # follows the input's memory layout, as float ops do
    assert same_bits(out, reference_fake_quantize(x, scale, zero, 4))


def test_gradient_path_is_unchanged():
    x = (torch.randn(64) * 2).requires_grad_(True)
    scale, zero = qparams_from_bounds(torch.tensor(-1.3), torch.tensor(1.7), 4)
    out = fake_quantize(x, scale, zero, 4)
    assert out.requires_grad
    assert same_bits(out.detach(), reference_fake_quantize(x.detach(), scale, zero, 4))
    out.sum().backward()

    class RoundSTE(torch.autograd.Function):
        forward = staticmethod(lambda ctx, t: torch.round(t))
        backward = staticmethod(lambda ctx, grad: grad)

    ref_x = x.detach().clone().requires_grad_(True)
    codes = torch.clamp(RoundSTE.apply(ref_x * (1.0 / scale)) + zero, 0, 15)
    ((codes - zero) * scale).sum().backward()
    assert torch.equal(x.grad, ref_x.grad) and (x.grad != 0).any() and (x.grad == 0).any()


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_other_dtypes_use_the_formula(dtype):
    x = torch.randn(8, 16).to(dtype)
    scale, zero = qparams_from_bounds(-torch.rand(16), torch.rand(16) + 0.5, 4)
    with torch.no_grad():
        out = fake_quantize(x, scale, zero, 4)
    expected = reference_fake_quantize(x, scale, zero, 4)
    assert out.dtype == expected.dtype and torch.equal(out, expected)


# -- the quantizers ------------------------------------------------------------------------
@pytest.mark.parametrize('assignment', ['cover', 'nearest'])
@pytest.mark.parametrize('distance', ['l2', 'l1'])
@pytest.mark.parametrize('bounds', ['envelope', 'mean'])
@pytest.mark.parametrize('groups', [1, 4, 8, 16])
def test_igq_channels_last_several_instances(assignment, distance, bounds, groups):
    calib = activations(4, 50, 32, seed=1)
    q = calibrate(IGQQuantizer(4, 32, groups=groups, distance=distance, bounds=bounds,
                               assignment=assignment), calib)
    x = activations(3, 40, 32, seed=2)
    assert same_bits(quantized(q, x), reference_igq(q, x))


def test_igq_windows_of_one_image_and_non_contiguous_inputs():
    q = calibrate(IGQQuantizer(4, 24, groups=8), activations(2, 64, 24, seed=3), num_instances=2)
    windows = activations(2 * 4, 16, 24, seed=4)
    assert same_bits(quantized(q, windows), reference_igq(q, windows))
    qkv = activations(2 * 4, 16, 3 * 24, seed=5)
    chunk = qkv.chunk(3, dim=-1)[1]  # what QKVQuantizer passes: a strided view
    assert not chunk.is_contiguous()
    assert same_bits(quantized(q, chunk), reference_igq(q, chunk))
    permuted = activations(2, 24, 4, 16, seed=6, channel_dim=1).permute(0, 2, 3, 1)
    assert same_bits(quantized(q, permuted), reference_igq(q, permuted))
    large = activations(2 * 7, 1000, 24, seed=21)  # ranges reduced in blocks of tokens
    assert same_bits(quantized(q, large), reference_igq(q, large))


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_igq_channels_first_conv_input(memory_format):
    calib = activations(2, 16, 9, 11, seed=7, channel_dim=1)
    q = calibrate(IGQQuantizer(4, 16, channel_dim=1, groups=4), calib)
    x = activations(3, 16, 10, 12, seed=8, channel_dim=1).to(memory_format=memory_format)
    assert same_bits(quantized(q, x), reference_igq(q, x))


@pytest.mark.parametrize('assignment', ['cover', 'nearest'])
def test_igq_every_token_its_own_instance_uses_bounded_blocks(assignment):
    # a 2-D input without num_instances: every row is an instance, 400 * 96 items
    q = calibrate(IGQQuantizer(4, 96, groups=8, candidates=(8,), assignment=assignment),
                  activations(50, 96, seed=9))
    x = activations(400, 96, seed=10)
    assert same_bits(quantized(q, x), reference_igq(q, x))


@pytest.mark.parametrize('assignment', ['cover', 'nearest'])
@pytest.mark.parametrize('groups', [1, 4, 8])
def test_igq_softmax_rows(groups, assignment):
    def attention(*shape, seed):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(shape, generator=gen) * torch.rand(*shape[:-1], 1, generator=gen) * 6
        return torch.softmax(logits, dim=-1)

    q = calibrate(IGQQuantizer(4, kind='softmax', groups=groups, assignment=assignment),
                  attention(4, 3, 49, 49, seed=11))
    for x in (attention(8, 3, 49, 49, seed=12),             # 1176 rows: distance table
              attention(240, 3, 49, 49, seed=13),           # 35280 rows: blocks
              attention(2, 49, 3, 49, seed=14).transpose(1, 2)):  # non-contiguous map
        assert same_bits(quantized(q, x), reference_igq(q, x))


def test_upper_bound_per_tensor_and_static_group_match_the_formula():
    x = activations(3, 40, 32, seed=15)
    upper = calibrate(UpperBoundQuantizer(4, 32), x)
    scale, zero = qparams_from_bounds(*reference_item_ranges(upper, x), 4)
    assert same_bits(quantized(upper, x), reference_items(upper, x, scale, zero))

    tensor = calibrate(PerTensorQuantizer(4, 32), x)
    scale, zero = qparams_from_bounds(tensor.lower, tensor.upper, 4)
    assert same_bits(quantized(tensor, x), reference_fake_quantize(x, scale, zero, 4))

    static = calibrate(StaticGroupQuantizer(4, 32, groups=4), x)
    scale, zero = qparams_from_bounds(static.channel_lower, static.channel_upper, 4)
    assert same_bits(quantized(static, x), reference_fake_quantize(x, scale, zero, 4))

    conv = activations(2, 16, 5, 7, seed=16, channel_dim=1)
    static = calibrate(StaticGroupQuantizer(4, 16, channel_dim=1, groups=4), conv)
    scale, zero = qparams_from_bounds(static.channel_lower, static.channel_upper, 4)
    assert same_bits(quantized(static, conv),
                     reference_fake_quantize(conv, scale.view(-1, 1, 1), zero.view(-1, 1, 1), 4))


def test_calibration_statistics_are_unchanged():
    x = activations(3, 40, 32, seed=17)
    q = calibrate(IGQQuantizer(4, 32, groups=8), x)
    lower, upper = q.pooled_ranges()
    ref_lower, ref_upper = reference_item_ranges(q, x)
    assert torch.equal(lower, ref_lower.reshape(-1)) and torch.equal(upper, ref_upper.reshape(-1))


def test_igq_under_autograd_keeps_the_straight_through_gradient():
    q = calibrate(IGQQuantizer(4, 16, groups=4), activations(2, 30, 16, seed=18))
    x = activations(2, 30, 16, seed=19).requires_grad_(True)
    with quant_mode(q, 'quantized'):
        out = q(x)
    assert same_bits(out.detach(), reference_igq(q, x.detach()))
    out.sum().backward()
    assert ((x.grad == 0) | ((x.grad - 1).abs() < 1e-6)).all() and (x.grad != 0).any()


def _allocated_bytes(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)


def test_quantize_allocates_little_more_than_its_output():
    # everything allocated during the call, freed or not: the output plus per-item
    # vectors, no activation-sized temporary (the formula alone allocates 6 of them)
    x = activations(1, 4096, 96, seed=20)
    q = calibrate(IGQQuantizer(4, 96, groups=8), x)
    assert _allocated_bytes(lambda: quantized(q, x)) < 1.1 * x.nbytes
    attn = torch.softmax(torch.randn(700, 3, 49, 49), dim=-1)  # 102900 rows of 49
    qs = calibrate(IGQQuantizer(4, kind='softmax', groups=8, candidates=(8,)), attn[:20])
    assert _allocated_bytes(lambda: quantized(qs, attn)) < 1.3 * attn.nbytes


def test_cached_group_parameters_follow_every_change():
    x = activations(2, 40, 16, seed=22)
    q = calibrate(IGQQuantizer(4, 16, groups=8), x)
    other = calibrate(IGQQuantizer(4, 16, groups=8), activations(2, 40, 16, seed=23) * 3)
    assert same_bits(quantized(q, x), reference_igq(q, x))
    q.set_groups(4)  # a buffer changed in place
    assert same_bits(quantized(q, x), reference_igq(q, x))
    q.load_state_dict(other.state_dict())
    assert same_bits(quantized(q, x), reference_igq(q, x))
    with torch.no_grad():
        q.group_upper[q.candidates.index(8)].mul_(2)
        q.centre_lower[q.candidates.index(8)].add_(0.5)
    q.set_groups(8)
    assert same_bits(quantized(q, x), reference_igq(q, x))
    q.double()  # buffers replaced
    assert same_bits(quantized(q, x.double()), reference_igq(q, x.double()))
    q.bits = 3
    assert same_bits(quantized(q, x.double()), reference_igq(q, x.double()))

import pytest
import torch

from igq_plugin.quant import qmax, quant_mode
from igq_plugin.quantizers import METHODS, IGQQuantizer, PerTensorQuantizer, StaticGroupQuantizer, build_activation_quantizer
from igq_plugin.quant.primitives import fake_quantize, qparams_from_bounds


def calibrate(quantizer, *batches):
    with quant_mode(quantizer, 'calibrate'):
        for batch in batches:
            assert quantizer(batch) is batch
    quantizer.finalize()
    return quantizer


def quantized(quantizer, x):
    with quant_mode(quantizer, 'quantized'):
        return quantizer(x)


def test_ordering_igq_beats_static_beats_per_tensor_at_4_bits(vit_activations):
    calib = vit_activations(8, 196, 96, seed=1)
    test = vit_activations(8, 196, 96, seed=2)
    errors = {}
    for method in ('per-tensor', 'static-group', 'igq-fixed'):
        q = calibrate(build_activation_quantizer(method, 4, 96, groups=8), calib)
        errors[method] = (quantized(q, test) - test).pow(2).mean().item()
    assert errors['igq-fixed'] < errors['static-group'] < errors['per-tensor'], errors


def test_upper_bound_is_per_instance_per_channel(vit_activations):
    x = vit_activations(3, 50, 12)
    q = calibrate(build_activation_quantizer('upper-bound', 4, 12), x)
    lower, upper = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    scale, zero = qparams_from_bounds(lower, upper, 4)
    assert torch.equal(quantized(q, x), fake_quantize(x, scale, zero, 4))


def test_igq_with_groups_equal_channels_and_one_image_is_upper_bound(vit_activations):
    x = vit_activations(1, 64, 12)
    igq = calibrate(IGQQuantizer(4, 12, groups=12, candidates=(12,)), x)
    upper = calibrate(build_activation_quantizer('upper-bound', 4, 12), x)
    assert torch.allclose(quantized(igq, x), quantized(upper, x), atol=1e-6)


def test_igq_one_group_is_per_tensor_with_its_bounds(vit_activations):
    x = vit_activations(4, 30, 16)
    q = calibrate(IGQQuantizer(4, 16, groups=1, candidates=(1,)), x)
    lower, upper = q.active_ranges()
    scale, zero = qparams_from_bounds(lower, upper, 4)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), 0, qmax(4))
    assert torch.equal(quantized(q, x), ref)


def test_static_one_group_is_per_tensor(vit_activations):
    x = vit_activations(4, 30, 16)
    static = calibrate(StaticGroupQuantizer(4, 16, groups=1), x)
    tensor = calibrate(PerTensorQuantizer(4, 16), x)
    assert torch.equal(quantized(static, x), quantized(tensor, x))


def test_every_channel_in_exactly_one_group(vit_activations):
    x = vit_activations(5, 40, 32)
    q = calibrate(IGQQuantizer(4, 32, groups=8), x)
    index = q.assign(x)
    assert index.shape == (5, 32)
    assert ((index >= 0) & (index < 8)).all()
    one_hot = torch.nn.functional.one_hot(index, 8)
    assert torch.equal(one_hot.sum(-1), torch.ones(5, 32, dtype=torch.long))


@pytest.mark.parametrize('method', METHODS)
def test_quantize_twice_changes_nothing_within_a_batch(method, vit_activations):
    x = vit_activations(2, 64, 16)
    q = calibrate(build_activation_quantizer(method, 4, 16, groups=4), x)
    once = quantized(q, x)
    assert torch.unique(once[0, :, 0]).numel() <= 16
    if method in ('per-tensor', 'static-group'):
        assert torch.equal(quantized(q, once), once)


def test_statistics_accumulate_over_batches_like_one_big_batch(vit_activations):
    x = vit_activations(6, 20, 8)
    for method in METHODS:
        if method == 'repq':  # searches per batch (tests/quant/test_repq.py)
            continue
        split = calibrate(build_activation_quantizer(method, 4, 8, groups=4), x[:2], x[2:5], x[5:])
        whole = calibrate(build_activation_quantizer(method, 4, 8, groups=4), x)
        assert torch.equal(quantized(split, x), quantized(whole, x)), method


def test_softmax_rows_grouped_by_max():
    attn = torch.softmax(torch.randn(2, 3, 49, 49) * torch.rand(2, 3, 49, 1) * 6, dim=-1)
    q = calibrate(build_activation_quantizer('igq', 4, kind='softmax', groups=4), attn)
    out = quantized(q, attn)
    assert out.shape == attn.shape and (out >= 0).all()
    index = q.assign(attn)
    assert index.shape == (2 * 3 * 49,)
    lower, upper = q.active_ranges()
    assert torch.equal(lower, torch.zeros(4))
    per_tensor = calibrate(build_activation_quantizer('per-tensor', 4, kind='softmax'), attn)
    assert (out - attn).pow(2).mean() < (quantized(per_tensor, attn) - attn).pow(2).mean()


def test_channels_first_layout_matches_tokens_last(vit_activations):
    x = vit_activations(3, 36, 8)  # [I, T, C]
    conv_input = x.transpose(1, 2).reshape(3, 8, 6, 6)
    last = calibrate(IGQQuantizer(4, 8, groups=4), x)
    first = calibrate(IGQQuantizer(4, 8, channel_dim=1, groups=4), conv_input)
    assert torch.allclose(last.group_upper, first.group_upper)
    expected = quantized(last, x).transpose(1, 2).reshape(3, 8, 6, 6)
    assert torch.equal(quantized(first, conv_input), expected)


def test_windows_of_one_image_form_one_instance(vit_activations):
    x = vit_activations(2, 64, 8)
    windows = x.reshape(2 * 4, 16, 8)  # 4 windows per image, contiguous per image
    q = calibrate(IGQQuantizer(4, 8, groups=4), x)
    q.num_instances = 2
    assert torch.equal(quantized(q, windows).reshape(2, 64, 8), quantized(q, x))


def test_set_groups_switches_between_calibrated_candidates(vit_activations):
    x = vit_activations(2, 64, 16)
    q = calibrate(IGQQuantizer(4, 16, groups=8), x)
    assert q.candidates == (1, 2, 4, 8, 12, 16)
    errors = []
    for g in q.candidates:
        q.set_groups(g)
        errors.append((quantized(q, x) - x).pow(2).mean().item())
    assert errors[-1] < errors[0]
    with pytest.raises(ValueError, match='groups=3'):
        q.set_groups(3)


class TestBadInput:
    def test_groups_out_of_range(self):
        with pytest.raises(ValueError, match=r'groups=0 .* 1\.\.16'):
            IGQQuantizer(4, 16, groups=0)
        with pytest.raises(ValueError, match=r'groups=17 .* 1\.\.16'):
            IGQQuantizer(4, 16, groups=17)
        with pytest.raises(ValueError, match='groups=32'):
            StaticGroupQuantizer(4, 16, groups=32)

    @pytest.mark.parametrize('bits', [1, 17])
    def test_bits(self, bits):
        for method in METHODS:
            with pytest.raises(ValueError, match=f'a_bits={bits}'):
                build_activation_quantizer(method, bits, 8)

    def test_unknown_method(self):
        with pytest.raises(ValueError, match="method='kmeans'"):
            build_activation_quantizer('kmeans', 4, 8)

    @pytest.mark.parametrize('method', METHODS)
    def test_empty_calibration(self, method):
        q = build_activation_quantizer(method, 4, 8, groups=4)
        with pytest.raises(ValueError, match='empty calibration'):
            q.finalize()

    @pytest.mark.parametrize('method', METHODS)
    @pytest.mark.parametrize('bad', [float('nan'), float('inf')])
    def test_non_finite_calibration(self, method, bad):
        q = build_activation_quantizer(method, 4, 8, groups=4)
        x = torch.randn(2, 5, 8)
        x[1, 2, 3] = bad
        with quant_mode(q, 'calibrate'), pytest.raises(ValueError, match='NaN or Inf'):
            q(x)

    @pytest.mark.parametrize('method', METHODS)
    def test_quantize_before_calibration(self, method):
        q = build_activation_quantizer(method, 4, 8, groups=4)
        with quant_mode(q, 'quantized'), pytest.raises(RuntimeError, match='before calibration'):
            q(torch.randn(2, 5, 8))

    def test_wrong_channel_count(self):
        q = build_activation_quantizer('igq', 4, 8, groups=4)
        with quant_mode(q, 'calibrate'), pytest.raises(ValueError, match='8 channels'):
            q(torch.randn(2, 5, 9))

    def test_bad_mode(self):
        q = build_activation_quantizer('igq', 4, 8, groups=4)
        with pytest.raises(ValueError, match="mode='int8'"):
            with quant_mode(q, 'int8'):
                pass


def test_fixed_range_quantizer_covers_every_uint8_pixel_within_half_a_step():
    from igq_plugin.quantizers import FixedRangeQuantizer
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    q = FixedRangeQuantizer(8, 3)
    with pytest.raises(ValueError, match='never set'):
        calibrate(q, torch.zeros(1, 3, 2, 2))
    q.set_range((0 - mean) / std, (255 - mean) / std)
    q.finalize()
    pixels = torch.randint(0, 256, (2, 3, 8, 8)).float()
    normalised = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    step = (1 / std).view(1, 3, 1, 1)  # 255 pixel levels over 2^8 - 1 codes: one pixel
    assert ((quantized(q, normalised) - normalised).abs() <= step / 2 + 1e-5).all()
    with pytest.raises(ValueError, match='upper > lower'):
        q.set_range(torch.ones(3), torch.zeros(3))

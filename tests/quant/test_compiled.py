"""The compiled run-time paths give the eager results bit for bit, and fall back to eager.

Every quantizer is compared with itself under ``compiling(False)`` (the eager path, held
against the formulas by test_fast_path.py). ``MIN_COMPILED_ELEMENTS`` is lowered so that
small tensors take the compiled path; the compiled kernels are shared by every test of
this module (the first use of each layout compiles it, later shapes reuse it).
"""
import logging
import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from igq_plugin.quant import (IGQQuantizer, PerTensorQuantizer, StaticGroupQuantizer,
                              UpperBoundQuantizer, WeightQuantizer, compiled, compiled_groups,
                              quant_mode)
from tests.quantizers import calibrate

@pytest.fixture(autouse=True)
def eager_fallbacks(monkeypatch):
    """Compiled paths on for any size; yields the list of eager fallbacks taken inside
    the compiled entry points (inputs without a view, failed compiles)."""
    monkeypatch.setattr(compiled, 'MIN_COMPILED_ELEMENTS', 1)
    monkeypatch.setattr(compiled._State, 'enabled', True)
    calls = []
    eager = compiled.fake_quantize

    def recorded(*args, **kwargs):
        calls.append(args[0].shape)
        return eager(*args, **kwargs)

    monkeypatch.setattr(compiled, 'fake_quantize', recorded)
    return calls


def same_bits(a, b):
    """Same shape, dtype and bits (the sign of zero included); NaN where the other has NaN."""
    if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a.isnan(), b.isnan()):
        return False
    return torch.equal(torch.where(a.isnan(), 0.0, a).view(torch.int32),
                       torch.where(b.isnan(), 0.0, b).view(torch.int32))


def activations(*shape, seed=0, channel_dim=-1):
    """Channels with spread-out ranges and offsets (some channels all >= 0)."""
    gen = torch.Generator().manual_seed(seed)
    bshape = [1] * len(shape)
    bshape[channel_dim] = shape[channel_dim]
    width = torch.exp(torch.randn(bshape, generator=gen))
    out = torch.randn(shape, generator=gen) * width + torch.randn(bshape, generator=gen)
    return out.abs() if seed % 3 == 2 else out


def attention(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen) * torch.rand(*shape[:-1], 1, generator=gen) * 6
    return torch.softmax(logits, dim=-1)


def special_values(x):
    """A contiguous copy of ``x`` with NaN, infinities, signed zeros, tiny and huge values."""
    x = x.clone(memory_format=torch.contiguous_format)
    flat = x.view(-1)
    step = max(1, flat.numel() // 64)
    flat[:8 * step:step] = torch.tensor([float('nan'), float('inf'), -float('inf'), -0.0, 0.0,
                                         -1e-30, 3e38, -3e38])
    return x


def compiled_and_eager(q, x):
    """``q(x)`` with the compiled path, then with the eager one."""
    with torch.no_grad(), quant_mode(q, 'quantized'):
        out = q(x)
        with compiled.compiling(False):
            return out, q(x)


def assert_same(q, x):
    out, expected = compiled_and_eager(q, x)
    assert same_bits(out, expected)
    if not expected.isnan().any():
        assert torch.equal(out, expected)


def channel_quantizers(channels, channel_dim=-1, bits=4):
    return [IGQQuantizer(bits, channels, channel_dim=channel_dim, groups=8),
            IGQQuantizer(bits, channels, channel_dim=channel_dim, groups=1, candidates=(1,)),
            IGQQuantizer(bits, channels, channel_dim=channel_dim, groups=4, candidates=(4,),
                         assignment='nearest'),
            UpperBoundQuantizer(bits, channels, channel_dim=channel_dim),
            PerTensorQuantizer(bits, channels, channel_dim=channel_dim),
            StaticGroupQuantizer(bits, channels, channel_dim=channel_dim, groups=4)]


# -- every quantizer, every kind ----------------------------------------------------------
@pytest.mark.parametrize('channels', [96, 100])
def test_tokens_last_with_windows_of_one_image(channels, eager_fallbacks):
    for q in channel_quantizers(channels):
        calibrate(q, activations(2, 64, channels, seed=1), num_instances=2)
        windows = activations(2 * 4, 16, channels, seed=2)  # 4 windows per image
        assert_same(q, windows)
        assert_same(q, special_values(windows))
        qkv = activations(2 * 4, 16, 3 * channels, seed=3)
        assert_same(q, qkv.chunk(3, dim=-1)[1])  # what QKVQuantizer passes: a strided view
        q.num_instances = None  # every leading index its own instance
        assert_same(q, activations(3, 20, channels, seed=4))
    assert not eager_fallbacks


def test_tokens_last_one_image_and_non_mergeable_views(eager_fallbacks):
    for q in channel_quantizers(96, bits=8):
        calibrate(q, activations(1, 200, 96, seed=5), num_instances=1)
        assert_same(q, activations(1, 300, 96, seed=6))
        assert_same(q, activations(1, 12, 25, 96, seed=7))  # [B, H, W, C]
    assert not eager_fallbacks
    for q in channel_quantizers(96, bits=8):
        calibrate(q, activations(1, 200, 96, seed=5), num_instances=1)
        # token axes that merge only with a copy: the eager path, inside the entry point
        permuted = activations(1, 96, 12, 25, seed=8, channel_dim=1).permute(0, 2, 3, 1)
        assert_same(q, permuted)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_channels_first(memory_format, eager_fallbacks):
    for q in channel_quantizers(24, channel_dim=1):
        calibrate(q, activations(2, 24, 9, 11, seed=9, channel_dim=1), num_instances=2)
        x = activations(3, 24, 10, 12, seed=10, channel_dim=1)
        q.num_instances = 3
        assert_same(q, x.to(memory_format=memory_format))
        assert_same(q, special_values(x).to(memory_format=memory_format))
    assert not eager_fallbacks


@pytest.mark.parametrize('shape', [(6, 3, 49, 49), (40, 49, 49)])
def test_softmax_maps(shape, eager_fallbacks):
    quantizers = [IGQQuantizer(4, kind='softmax', groups=8),
                  IGQQuantizer(4, kind='softmax', groups=4, candidates=(4,),
                               assignment='nearest'),
                  UpperBoundQuantizer(4, kind='softmax'), PerTensorQuantizer(4, kind='softmax'),
                  StaticGroupQuantizer(4, kind='softmax')]
    for q in quantizers:
        calibrate(q, attention(*shape, seed=11))
        x = attention(*shape, seed=12)
        assert_same(q, x)
        assert_same(q, special_values(x))
        x[..., 0] = 0.0  # rows with exact zeros
        assert_same(q, x)
    assert not eager_fallbacks


@pytest.mark.parametrize('bits', [2, 8, 16])
def test_bit_widths(bits, eager_fallbacks):
    for q in (IGQQuantizer(bits, 100, groups=8), UpperBoundQuantizer(bits, 100)):
        calibrate(q, activations(1, 64, 100, seed=25), num_instances=1)
        assert_same(q, special_values(activations(1, 80, 100, seed=26)))
    for q in (IGQQuantizer(bits, kind='softmax', groups=8),
              UpperBoundQuantizer(bits, kind='softmax')):
        calibrate(q, attention(20, 49, 49, seed=27))
        assert_same(q, attention(30, 49, 49, seed=28))
    assert not eager_fallbacks


# -- dynamic shapes -------------------------------------------------------------------------
def test_new_shapes_do_not_recompile(eager_fallbacks):
    q = calibrate(IGQQuantizer(4, 96, groups=8), activations(2, 100, 96, seed=13),
                  num_instances=2)
    softmax = calibrate(IGQQuantizer(4, kind='softmax', groups=8), attention(4, 49, 49, seed=14))
    assert_same(q, activations(2 * 3, 49, 96, seed=15))  # compiles (or reuses) the layouts
    assert_same(softmax, attention(30, 49, 49, seed=16))
    before = counters['stats']['unique_graphs']
    for windows, tokens in [(4, 49), (9, 49), (2, 64), (15, 49), (6, 100)]:
        assert_same(q, activations(2 * windows, tokens, 96, seed=windows))
        assert_same(softmax, attention(windows * 3, tokens, tokens, seed=tokens))
    assert counters['stats']['unique_graphs'] == before and not eager_fallbacks


# -- what stays eager ------------------------------------------------------------------------
def test_gradients_and_other_dtypes_take_the_eager_path():
    q = calibrate(IGQQuantizer(4, 32, groups=4), activations(2, 30, 32, seed=17))
    x = activations(2, 30, 32, seed=18)
    assert compiled.use_compiled('igq', x)
    assert not compiled.use_compiled('igq', x.double())
    assert not compiled.use_compiled('igq', x.requires_grad_(True))
    with torch.no_grad():
        assert compiled.use_compiled('igq', x)
    assert not compiled.use_compiled('unlisted', x.detach())
    with quant_mode(q, 'quantized'):
        out = q(x)
    out.sum().backward()  # the straight-through estimator of the eager path
    assert x.grad is not None and (x.grad != 0).any()


def test_small_tensors_stay_eager(monkeypatch):
    monkeypatch.setattr(compiled, 'MIN_COMPILED_ELEMENTS', 1 << 16)
    assert not compiled.use_compiled('igq', torch.zeros(1, 255, 256))
    assert compiled.use_compiled('igq', torch.zeros(1, 256, 256))


# -- switching off, and compile failures -----------------------------------------------------
def test_switched_off_gives_the_same_results(eager_fallbacks):
    q = calibrate(IGQQuantizer(4, 40, groups=4), activations(1, 50, 40, seed=19),
                  num_instances=1)
    x = activations(1, 70, 40, seed=20)
    with torch.no_grad(), quant_mode(q, 'quantized'):
        compiled.set_compile_enabled(True)
        out = q(x)
        compiled.set_compile_enabled(False)
        try:
            assert not compiled.compile_enabled()
            assert not compiled.use_compiled('igq', x)
            assert same_bits(q(x), out)
        finally:
            compiled.set_compile_enabled(True)
    assert not eager_fallbacks


@pytest.mark.parametrize('value, enabled', [('0', False), ('off', False), ('False', False),
                                            ('no', False), ('1', True), ('', True)])
def test_environment_variable(monkeypatch, value, enabled):
    monkeypatch.setenv(compiled.ENV_VAR, value)
    assert compiled.enabled_by_environment() is enabled
    monkeypatch.delenv(compiled.ENV_VAR)
    assert compiled.enabled_by_environment()


def test_failed_compile_warns_once_and_runs_eager(monkeypatch, caplog, eager_fallbacks):
    monkeypatch.setattr(compiled._State, 'warned', False)
    # fresh compiled functions whose compile fails, as without a C++ compiler
    monkeypatch.setattr(compiled, '_COMPILED', {name: compiled._CompiledFunction(f.fn)
                                                for name, f in compiled._COMPILED.items()})

    def broken_compile(fn, **options):
        def call(*args):
            raise RuntimeError('InvalidCxxCompiler: No working C++ compiler found')
        return call

    monkeypatch.setattr(torch, 'compile', broken_compile)
    q = calibrate(IGQQuantizer(4, 40, groups=4), activations(1, 50, 40, seed=21),
                  num_instances=1)
    softmax = calibrate(IGQQuantizer(4, kind='softmax', groups=4), attention(4, 49, 49, seed=22))
    x, attn = activations(1, 70, 40, seed=23), attention(8, 49, 49, seed=24)
    with caplog.at_level(logging.WARNING, logger='igq_plugin'):
        for _ in range(2):
            for quantizer, batch in ((q, x), (softmax, attn)):
                out, expected = compiled_and_eager(quantizer, batch)
                assert same_bits(out, expected)
    warnings = [r for r in caplog.records if r.name == 'igq_plugin']
    assert len(warnings) == 1 and 'InvalidCxxCompiler' in warnings[0].getMessage()
    assert compiled._COMPILED['_tokens_last'].failed and compiled._COMPILED['_rows'].failed
    assert eager_fallbacks  # every call above ran eager


def test_switched_off_by_the_environment_and_lazy():
    # IGQ_COMPILE=0 is read at import; torch._dynamo loads on the first compiled call only
    code = ('import sys\n'
            'from igq_plugin.quant import compiled\n'
            'assert not compiled.compile_enabled()\n'
            'assert "torch._dynamo" not in sys.modules, "torch._dynamo imported"\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=dict(os.environ, **{compiled.ENV_VAR: '0'}))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the compiled group parameters of IGQ ('cover') -------------------------------------------
@pytest.fixture
def group_parameters(monkeypatch):
    """Records, per call of the compiled 'cover' parameters, whether a graph gave them."""
    calls = []
    original = compiled_groups.cover_parameters

    def recorded(*args, **kwargs):
        params = original(*args, **kwargs)
        calls.append(params is not None)
        return params

    monkeypatch.setattr(compiled_groups, 'cover_parameters', recorded)
    return calls


def test_igq_group_parameters_are_compiled_for_every_layout(group_parameters, eager_fallbacks):
    tokens = calibrate(IGQQuantizer(4, 96, groups=8), activations(2, 64, 96, seed=30),
                       num_instances=2)
    conv = calibrate(IGQQuantizer(4, 24, channel_dim=1, groups=8),
                     activations(2, 24, 9, 11, seed=31, channel_dim=1), num_instances=2)
    softmax = calibrate(IGQQuantizer(4, kind='softmax', groups=8), attention(6, 49, 49, seed=32))
    for quantizer, x in ((tokens, activations(2 * 4, 16, 96, seed=33)),
                         (tokens, activations(2 * 4, 16, 3 * 96, seed=34).chunk(3, dim=-1)[2]),
                         (conv, activations(2, 24, 10, 12, seed=35, channel_dim=1)),
                         (softmax, attention(8, 49, 49, seed=36))):
        quantizer.num_instances = x.shape[0] if quantizer is conv else 2
        assert_same(quantizer, x)
    assert group_parameters == [True] * 4 and not eager_fallbacks
    assert all(graph.compiled is not None and not graph.failed
               for graph in compiled_groups._GRAPHS.values())


def test_igq_ties_and_uncovered_items_match_eager(group_parameters):
    """Groups with equal bounds (ties go to the first in cover order) and items that no
    group covers (the widest group, first of equals)."""
    q = calibrate(IGQQuantizer(4, 32, groups=4, candidates=(4,)), activations(1, 64, 32, seed=37),
                  num_instances=1)
    q.group_lower[0, :4] = torch.tensor([-1.0, -1.0, -3.0, -3.0])
    q.group_upper[0, :4] = torch.tensor([1.0, 1.0, 3.0, 3.0])
    x = activations(1, 40, 32, seed=38) * 2  # some channels beyond +-3
    assert_same(q, x)
    softmax = calibrate(IGQQuantizer(4, kind='softmax', groups=4, candidates=(4,)),
                        attention(6, 49, 49, seed=39))
    softmax.group_upper[0, :4] = torch.tensor([0.25, 0.5, 1.0, 1.0])
    y = attention(8, 49, 49, seed=40)
    y[0, 0, :2] = torch.tensor([0.5, 0.5])  # a row maximum equal to a bound
    assert_same(softmax, y)
    assert group_parameters == [True, True]


def test_igq_layouts_without_a_graph_run_eager(group_parameters):
    few_tokens = calibrate(IGQQuantizer(4, 40, groups=4), activations(2, 30, 40, seed=41))
    assert_same(few_tokens, activations(3, compiled_groups.TOKEN_BLOCK - 1, 40, seed=42))
    many = compiled_groups.MAX_ROW_GROUPS + 4
    softmax = calibrate(IGQQuantizer(4, kind='softmax', groups=many, candidates=(many,)),
                        attention(6, 49, 49, seed=43))
    assert_same(softmax, attention(8, 49, 49, seed=44))
    assert softmax._active_tables().cover is None  # no compiled tables for so many groups
    assert group_parameters == [False]


@pytest.mark.parametrize('shape', [(96, 288), (24, 12, 3, 3)])
@pytest.mark.parametrize('bits', [4, 8])
def test_weight_quantizer(shape, bits, eager_fallbacks):
    gen = torch.Generator().manual_seed(45)
    channel_scales = torch.exp(torch.randn(shape[0], *[1] * (len(shape) - 1), generator=gen))
    weight = torch.randn(shape, generator=gen) * channel_scales
    quantizer = WeightQuantizer(bits, shape[0])
    quantizer.fit(weight)
    with torch.no_grad(), quant_mode(quantizer, 'quantized'):
        out = quantizer(weight)
        with compiled.compiling(False):
            expected = quantizer(weight)
    assert same_bits(out, expected) and not eager_fallbacks
    assert compiled.use_compiled('weight', weight)

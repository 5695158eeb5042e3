"""QKVQuantizer's one-pass fake-quantization equals the three quantizers' outputs side
by side, bit for bit, compiled and eager, and steps aside where it would change what a
caller sees."""
import pytest
import torch

from igq_plugin.nn import QKVQuantizer
from igq_plugin.quant import (IGQQuantizer, PerTensorQuantizer, RepQQuantizer,
                              StaticGroupQuantizer, UpperBoundQuantizer, compiled, quant_mode)
from tests.quant.test_compiled import activations, same_bits
from tests.quantizers import calibrate

CHANNELS, WINDOWS = 32, 4  # 4 windows per image


def operand_quantizers(kind, bits=4):
    if kind == 'igq':
        return [IGQQuantizer(bits, CHANNELS, groups=g, candidates=(g,)) for g in (4, 1, 8)]
    if kind == 'mixed':
        return [IGQQuantizer(bits, CHANNELS, groups=4, assignment='nearest'),
                PerTensorQuantizer(bits, CHANNELS), UpperBoundQuantizer(bits, CHANNELS)]
    if kind == 'static':
        return [StaticGroupQuantizer(bits, CHANNELS, groups=4) for _ in range(3)]
    return [RepQQuantizer(bits, CHANNELS) for _ in range(3)]


def calibrated_qkv(kind):
    q, k, v = operand_quantizers(kind)
    calib = activations(2 * WINDOWS, 16, 3 * CHANNELS, seed=50)
    for quantizer, part in zip((q, k, v), calib.chunk(3, dim=-1)):
        calibrate(quantizer, part, num_instances=2)
    return QKVQuantizer(q, k, v, num_heads=2)


def separately(module, qkv):
    """The three quantizers called one by one and concatenated."""
    parts = qkv.chunk(3, dim=-1)
    return torch.cat([m(p) for m, p in zip((module.q, module.k, module.v), parts)], dim=-1)


@pytest.mark.parametrize('kind', ['igq', 'mixed', 'static'])
@pytest.mark.parametrize('compiling', [True, False])
def test_one_pass_equals_the_three_quantizers(kind, compiling, monkeypatch):
    monkeypatch.setattr(compiled, 'MIN_COMPILED_ELEMENTS', 1)
    module = calibrated_qkv(kind)
    qkv = activations(2 * WINDOWS, 16, 3 * CHANNELS, seed=51)
    with torch.no_grad(), quant_mode(module, 'quantized'), compiled.compiling(compiling):
        parts = qkv.chunk(3, dim=-1)
        assert module._quantize_in_one_pass(qkv, parts) is not None
        out = module(qkv)
        expected = separately(module, qkv)
    assert same_bits(out, expected) and not torch.equal(out, qkv)


def test_steps_aside_for_hooks_modes_autograd_and_other_quantizers():
    qkv = activations(2 * WINDOWS, 16, 3 * CHANNELS, seed=52)
    parts = qkv.chunk(3, dim=-1)
    module = calibrated_qkv('igq')
    with torch.no_grad(), quant_mode(module, 'quantized'):
        seen = []
        handle = module.k.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert module._quantize_in_one_pass(qkv, parts) is None
        assert same_bits(module(qkv), separately(module, qkv)) and len(seen) == 2
        handle.remove()
        module.v.mode = module.v.mode.FLOAT  # the search quantizes one operand at a time
        assert module._quantize_in_one_pass(qkv, parts) is None
        assert torch.equal(module(qkv)[..., 2 * CHANNELS:], parts[2])
    with quant_mode(module, 'quantized'):
        grad = qkv.clone().requires_grad_()
        assert module._quantize_in_one_pass(grad, grad.chunk(3, dim=-1)) is None
    repq = calibrated_qkv('repq')
    with torch.no_grad(), quant_mode(repq, 'quantized'):
        assert repq._quantize_in_one_pass(qkv, parts) is None
        assert same_bits(repq(qkv), separately(repq, qkv))

"""QKVQuantizer quantizes Q, K and V each with its own quantizer, in its own mode, and
records the cost of the two attention matmuls that consume them."""
import pytest
import torch

from igq_plugin.nn import QKVQuantizer
from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.quantizers import (IGQQuantizer, PerTensorQuantizer, RepQQuantizer,
                                   StaticGroupQuantizer, UpperBoundQuantizer)
from tests.quantizer_helpers import activations, calibrate

CHANNELS, WINDOWS, TOKENS = 32, 4, 16  # 4 windows per image


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
    calib = activations(2 * WINDOWS, TOKENS, 3 * CHANNELS, seed=50)
    for quantizer, part in zip((q, k, v), calib.chunk(3, dim=-1)):
        calibrate(quantizer, part, num_instances=2)
    return QKVQuantizer(q, k, v, num_heads=2)


@pytest.mark.parametrize('kind', ['igq', 'mixed', 'static', 'repq'])
def test_each_operand_is_its_own_quantizers_output(kind):
    module = calibrated_qkv(kind)
    qkv = activations(2 * WINDOWS, TOKENS, 3 * CHANNELS, seed=51)
    with torch.no_grad(), quant_mode(module, 'quantized'):
        out = module(qkv)
        # element-wise maths: the same operations on the same values give the same bits
        for part, quantizer, got in zip(qkv.chunk(3, dim=-1), (module.q, module.k, module.v),
                                        out.chunk(3, dim=-1)):
            assert torch.equal(got, quantizer(part))
    assert out.shape == qkv.shape and not torch.equal(out, qkv)


def test_operands_follow_their_own_mode():
    module = calibrated_qkv('igq')
    qkv = activations(2 * WINDOWS, TOKENS, 3 * CHANNELS, seed=52)
    parts = qkv.chunk(3, dim=-1)
    with torch.no_grad():
        assert module(qkv) is qkv  # every quantizer in float mode: untouched
        with quant_mode(module, 'quantized'):
            module.v.mode = QuantMode.FLOAT  # the search quantizes one operand at a time
            out = module(qkv).chunk(3, dim=-1)
    assert torch.equal(out[2], parts[2]) and not torch.equal(out[0], parts[0])


def test_records_the_attention_matmul_costs():
    module = calibrated_qkv('igq')
    heads, qkv = module.num_heads, activations(2 * WINDOWS, TOKENS, 3 * CHANNELS, seed=53)
    with torch.no_grad(), quant_mode(module, 'calibrate'):
        module(qkv)
    score_macs = 2 * WINDOWS * TOKENS * TOKENS * CHANNELS  # q @ k^T over all heads
    assert module.q.op_cost.macs == module.k.op_cost.macs == score_macs
    assert module.q.op_cost.out_elements == 2 * WINDOWS * heads * TOKENS * TOKENS
    assert module.v.op_cost.out_elements == 2 * WINDOWS * TOKENS * CHANNELS  # attn @ v

"""torch.nn.MultiheadAttention made explicit (the attention of mmseg's ViT)."""
import copy

import pytest
import torch
from torch import nn

from igq_plugin import QuantConfig, calibrate_model, float_run, quantize_model
from igq_plugin.nn import activation_quantizers
from igq_plugin.quant import QuantMode, quant_mode


class Block(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(16, 2, batch_first=batch_first)

    def forward(self, x):  # [B, N, C]
        x = x if self.batch_first else x.transpose(0, 1)
        out = self.attn(x, x, x)[0]
        return out if self.batch_first else out.transpose(0, 1)


@pytest.mark.parametrize('batch_first', [True, False])
def test_float_and_explicit_paths(batch_first):
    torch.manual_seed(0)
    reference = Block(batch_first).eval()
    model = copy.deepcopy(reference)
    quantize_model(model, QuantConfig(method='per-tensor'), first_layers=())
    x = torch.randn(2, 5, 16)
    with torch.no_grad(), float_run(model):
        assert torch.equal(model(x), reference(x))
        with quant_mode(model, QuantMode.CALIBRATE):  # explicit path, nothing quantized
            torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)
    names = set(activation_quantizers(model))
    assert {'attn.in_proj_input_quantizer', 'attn.qkv_quantizer.q', 'attn.qkv_quantizer.k',
            'attn.qkv_quantizer.v', 'attn.softmax.quantizer',
            'attn.out_proj.input_quantizer'} == names
    calibrate_model(model, [x], lambda m, b: m(b))
    with torch.no_grad():
        assert not torch.equal(model(x), reference(x))
    result = model.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys and all('quantizer' in k for k in result.missing_keys)


def test_cross_attention_is_refused_when_quantized():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(16, 2, batch_first=True)
    holder = nn.Sequential(attn)
    quantize_model(holder, QuantConfig(method='per-tensor'), first_layers=())
    with float_run(holder), quant_mode(holder, QuantMode.CALIBRATE), \
            pytest.raises(NotImplementedError, match='cross-attention'):
        attn(torch.randn(1, 3, 16), torch.randn(1, 4, 16), torch.randn(1, 4, 16))

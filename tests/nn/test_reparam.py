"""RepQ-ViT's scale reparameterisation through the one conversion path."""
import pytest
import torch
from torch import nn

from igq_plugin import QuantConfig, calibrate_model, float_run, quantize_model
from igq_plugin.nn import (QuantState, activation_quantizers, export_state, import_state,
                           post_norm_linears, set_quant_state)
from igq_plugin.quant import QuantMode, set_mode
from igq_plugin.quantizers import LogSqrt2Quantizer, RepQQuantizer

from ..toy_models import Attention


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """timm's ViT block layout: norm1 -> attn.qkv, norm2 -> mlp.fc1."""

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm, self.reduction = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x):  # [B, N, C] -> [B, N/2, C]
        b, n, c = x.shape
        return self.reduction(self.norm(x.reshape(b, n // 2, 2 * c)))


class Net(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(6, dim)
        self.blocks = nn.Sequential(Block(dim, heads), PatchMerging(dim), Block(dim, heads))
        self.head = nn.Linear(dim, 4)
        with torch.no_grad():  # LayerNorm affines with outlier channels, as trained ViTs have
            for norm in (m for m in self.modules() if isinstance(m, nn.LayerNorm)):
                norm.weight.mul_(torch.rand(norm.weight.shape) * 3).index_fill_(0, torch.tensor([1]), 9.0)
                norm.bias.add_(torch.randn(norm.bias.shape))

    def forward(self, x):  # [B, N, 6]
        return self.head(self.blocks(self.embed(x)).mean(1))


PAIRS = {'blocks.0.attn.qkv': 'blocks.0.norm1', 'blocks.0.mlp.fc1': 'blocks.0.norm2',
         'blocks.1.reduction': 'blocks.1.norm', 'blocks.2.attn.qkv': 'blocks.2.norm1',
         'blocks.2.mlp.fc1': 'blocks.2.norm2'}


def forward(model, batch):
    return model(batch)


def calibrated(method='repq', model=None, batches=None):
    model = Net() if model is None else model
    quantize_model(model, QuantConfig(method=method, w_bits=4, a_bits=4))
    calibrate_model(model, batches or [torch.randn(2, 24, 6, generator=torch.Generator().manual_seed(1))],
                    forward)
    return model


def inputs():
    return torch.randn(3, 24, 6, generator=torch.Generator().manual_seed(2))


def test_post_norm_linears_follow_the_block_structure():
    assert post_norm_linears(Net()) == PAIRS


def test_repq_folds_every_post_norm_input_and_keeps_the_float_function():
    reference, model = Net(), calibrated()
    record = model.igq_quantization
    assert record.folds == PAIRS
    x = inputs()
    with float_run(model):
        folded_float = model(x)
    torch.testing.assert_close(folded_float, reference(x), rtol=1e-5, atol=1e-5)
    # The weights did change, and every folded input is per tensor now.
    assert not torch.equal(model.blocks[0].norm1.weight, reference.blocks[0].norm1.weight)
    assert model.blocks[1].reduction.bias is not None  # the fold's compensation
    for linear in PAIRS:
        quantizer = model.get_submodule(linear).input_quantizer
        assert isinstance(quantizer, RepQQuantizer) and quantizer.post_norm
        assert bool(quantizer.folded)
    softmaxes = [q for q in activation_quantizers(model).values() if q.kind == 'softmax']
    assert softmaxes and all(isinstance(q, LogSqrt2Quantizer) for q in softmaxes)
    assert not torch.allclose(model(x), folded_float, atol=1e-3)  # quantized differs


def test_repq_quantizes_the_same_operands_as_the_other_methods():
    names = set(activation_quantizers(calibrated('repq')))
    for method in ('per-tensor', 'igq-fixed'):
        assert set(activation_quantizers(calibrated(method))) == names


def test_state_reloads_exactly_into_a_float_model_and_into_a_folded_one():
    model = calibrated()
    x = inputs()
    expected = model(x)
    state = export_state(model)
    fresh = Net()
    quantize_model(fresh, QuantConfig(method='repq', w_bits=4, a_bits=4))
    import_state(fresh, state)
    set_quant_state(fresh, QuantState.READY)
    set_mode(fresh, QuantMode.QUANTIZED)
    assert torch.equal(fresh(x), expected)
    import_state(model, state)  # already folded: the float weights are restored first
    assert torch.equal(model(x), expected)


def test_calibrating_again_starts_from_the_float_weights():
    model = calibrated()
    x = inputs()
    once = model(x)
    calibrate_model(model, [torch.randn(2, 24, 6, generator=torch.Generator().manual_seed(1))],
                    forward)
    assert torch.equal(model(x), once)


def test_a_state_of_another_method_is_refused_and_changes_nothing():
    model = calibrated()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match='does not match'):
        import_state(model, export_state(calibrated('igq-fixed')))
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_a_model_without_norm_linear_pairs_quantizes_per_tensor():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    record = quantize_model(model, QuantConfig(method='repq'))
    assert record.folds == {}
    calibrate_model(model, [torch.randn(4, 6)], forward)
    assert model(torch.randn(2, 6)).shape == (2, 3)

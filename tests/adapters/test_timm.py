"""timm ViT / DeiT / Swin through the core API: adapters, coverage, checkpoints, search."""
import copy

import pytest
import torch

from igq_plugin import (ClassifierPredictor, QuantConfig, calibrate_model, float_run,
                        quantize_model)
from igq_plugin.nn import QuantLinear, QuantSoftmax, activation_quantizers, float_layer_count
from igq_plugin.quant import QuantMode, quant_mode

timm = pytest.importorskip('timm')

# architectures of the timm names, shrunk in depth / image size for CPU tests
MODELS = {
    'vit_tiny_patch16_224': dict(img_size=64, depth=3),
    'deit_tiny_patch16_224': dict(img_size=64, depth=3),
    'swin_tiny_patch4_window7_224': dict(img_size=112, depths=(1, 1, 2, 1)),
}


def build(name, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name]).eval()


def images(name, count=2, seed=0):
    size = MODELS[name]['img_size']
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=gen) * 1.5


def forward(model, batch):
    return model(batch)


def converted(name, method='igq-fixed', **kwargs):
    reference = build(name)
    model = copy.deepcopy(reference)
    quantize_model(model, QuantConfig(method=method, groups=4, **kwargs))
    return reference, model


@pytest.mark.parametrize('name', sorted(MODELS))
def test_float_mode_is_bit_identical_to_timm(name):
    reference, model = converted(name)
    x = images(name)
    with torch.no_grad(), float_run(model):
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'swin_tiny_patch4_window7_224'])
def test_explicit_path_equals_timms_unfused_attention(name):
    """With quantizers recording only (calibrate mode) the adapted attention computes
    exactly timm's own non-fused path."""
    reference, model = converted(name)
    for module in reference.modules():
        if hasattr(module, 'fused_attn'):
            module.fused_attn = False
    x = images(name)
    with torch.no_grad(), float_run(model), quant_mode(model, QuantMode.CALIBRATE):
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_linear_operand_and_softmax_is_quantized(name):
    reference, model = converted(name)
    blocks = [m for m in reference.modules() if hasattr(m, 'qkv')]
    linears = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)]
    assert float_layer_count(model) == {}
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == len(linears)
    assert sum(isinstance(m, QuantSoftmax) for m in model.modules()) == len(blocks)
    x = images(name)
    calibrate_model(model, list(x.split(1)), forward)
    changed = {}
    hooks = [q.register_forward_hook(lambda m, i, o, n=n: changed.__setitem__(
        n, not torch.equal(i[0], o))) for n, q in activation_quantizers(model).items()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    # every Linear input (qkv, proj, fc1, fc2, merging, head), Q, K, V and every softmax,
    # plus the patch embedding's input
    assert len(changed) == len(linears) + 4 * len(blocks) + 1
    assert all(changed.values()), [n for n, c in changed.items() if not c]


@pytest.mark.parametrize('name', sorted(MODELS))
def test_stock_state_dict_loads_with_only_quantizer_buffers_missing(name):
    reference, model = converted(name)
    result = model.load_state_dict(build(name, seed=1).state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('quantizer' in k for k in result.missing_keys)


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'swin_tiny_patch4_window7_224'])
def test_igq_allocation_on_a_classifier(name):
    reference, model = converted(name, method='igq', candidates=(1, 2, 4))
    batches = list(images(name, 2).split(1))
    report = calibrate_model(model, batches, forward,
                             predictor=ClassifierPredictor(model, batches, forward))
    assert report.allocation and report.allocated_gbops <= report.budget_gbops + 1e-12
    sensitivities = [r['sensitivity'] for r in report.rows if r['sensitivity'] is not None]
    assert len(sensitivities) == len(report.allocation) and max(sensitivities) > 0
    with torch.no_grad():
        out = model(images(name, 2, seed=5))
        assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize('name', sorted(MODELS))
def test_repq_folds_every_post_norm_linear_and_keeps_timms_float_function(name):
    reference, model = converted(name, method='repq')
    folds = model.igq_quantization.folds
    blocks = [n for n, m in reference.named_modules() if hasattr(m, 'norm1') and hasattr(m, 'mlp')]
    merges = [n for n, m in reference.named_modules() if type(m).__name__ == 'PatchMerging']
    assert len(folds) == 2 * len(blocks) + len(merges) and blocks
    for block in blocks:
        assert folds[f'{block}.attn.qkv'] == f'{block}.norm1'
        assert folds[f'{block}.mlp.fc1'] == f'{block}.norm2'
    calibrate_model(model, [images(name, seed=1)], forward)
    x = images(name)
    with torch.no_grad():
        with float_run(model):
            torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model(x), reference(x), atol=1e-3)

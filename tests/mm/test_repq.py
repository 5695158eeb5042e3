"""method='repq' (RepQ-ViT) on mm models: folds, float function, state files."""
import copy
import types

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

import igq_plugin.mm.hook as hook_module
from igq_plugin.mm import IGQCalibrationHook
from igq_plugin.mm.calibration import calibrate_mm_model
from igq_plugin.mm.convert import quantize_mm_model
from igq_plugin.nn import activation_quantizers, float_run, quantization_record

from .tiny_models import fake_runner_fields, no_source, tiny_batches, tiny_model_cfg
from .tiny_segmentors import VIT_UPERNET, tiny_seg_batches, tiny_segmentor_cfg

REPQ = dict(method='repq', w_bits=4, a_bits=4)


def build(cfg):
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.eval()
    return model


def test_swin_detector_folds_every_block_and_patch_merging():
    init_default_scope('mmdet')
    model = build(tiny_model_cfg(quant=REPQ))
    quantize_mm_model(model)
    folds = quantization_record(model).folds
    stage = 'backbone.stages'
    expected = {}
    for i, depth in enumerate([1, 1, 2, 1]):
        for j in range(depth):
            block = f'{stage}.{i}.blocks.{j}'
            expected[f'{block}.attn.w_msa.qkv'] = f'{block}.norm1'
            expected[f'{block}.ffn.layers.0.0'] = f'{block}.norm2'
        if i < 3:
            expected[f'{stage}.{i}.downsample.reduction'] = f'{stage}.{i}.downsample.norm'
    assert folds == expected


@pytest.mark.parametrize('size', [128, 64])  # 64: the last stage's 2x2 map is padded to 4x4
def test_swin_detector_keeps_its_float_features_after_the_fold(size):
    init_default_scope('mmdet')
    reference = build(tiny_model_cfg())
    model = build(tiny_model_cfg(quant=REPQ))
    model.load_state_dict(reference.state_dict(), strict=False)
    quantize_mm_model(model)
    batches = tiny_batches(model, count=1, size=size)
    calibrate_mm_model(model, batches)
    inputs = batches[0]['inputs']
    with torch.no_grad():
        with float_run(model):
            folded = model.extract_feat(inputs)
        expected = reference.extract_feat(inputs)
        quantized = model.extract_feat(inputs)
    for a, b in zip(folded, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert any(not torch.allclose(a, b, atol=1e-3) for a, b in zip(quantized, expected))


def test_vit_segmentor_folds_the_fused_in_proj_and_the_ffn():
    init_default_scope('mmseg')
    reference = build(tiny_segmentor_cfg(VIT_UPERNET))
    model = build(tiny_segmentor_cfg(VIT_UPERNET, quant=REPQ))
    model.load_state_dict(reference.state_dict(), strict=False)
    quantize_mm_model(model)
    folds = quantization_record(model).folds
    assert 'backbone.layers.0.attn.attn' in folds and 'backbone.layers.0.ffn.layers.0.0' in folds
    assert folds['backbone.layers.0.attn.attn'] == 'backbone.layers.0.ln1'
    batches = tiny_seg_batches(model, count=1)
    calibrate_mm_model(model, batches)
    inputs = batches[0]['inputs']
    with torch.no_grad():
        with float_run(model):
            folded = model.extract_feat(inputs)
        expected = reference.extract_feat(inputs)
    for a, b in zip(folded, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    attn = model.get_submodule('backbone.layers.0.attn.attn')
    assert bool(attn.in_proj_input_quantizer.folded)


def fake_runner(tmp_path, model_cfg):
    model = build(model_cfg)
    return types.SimpleNamespace(model=model, **fake_runner_fields(model_cfg),
                                 work_dir=str(tmp_path),
                                 test_loop=types.SimpleNamespace(dataloader=None),
                                 val_loop=types.SimpleNamespace(dataloader=None))


def test_state_file_reloads_exactly_and_other_weights_are_refused(tmp_path, monkeypatch):
    init_default_scope('mmdet')
    cfg = tiny_model_cfg(quant=REPQ)
    runner = fake_runner(tmp_path, cfg)
    batches = tiny_batches(runner.model, count=1)
    monkeypatch.setattr(hook_module, 'build_calibration_source', no_source)
    monkeypatch.setattr(hook_module, 'draw_calibration_batches', lambda *a: batches)
    hook = IGQCalibrationHook()
    hook.before_run(runner)
    hook.before_test(runner)
    state_file = str(tmp_path / 'igq_state.pth')

    fresh = fake_runner(tmp_path, cfg)  # the same float weights (seed 0), not yet folded
    loader = IGQCalibrationHook(state_file=state_file)
    loader.before_run(fresh)
    loader.before_test(fresh)
    inputs = batches[0]['inputs']
    with torch.no_grad():
        for a, b in zip(runner.model.extract_feat(inputs), fresh.model.extract_feat(inputs)):
            assert torch.equal(a, b)
    assert set(activation_quantizers(fresh.model)) == set(activation_quantizers(runner.model))

    other = fake_runner(tmp_path, cfg)
    with torch.no_grad():
        other.model.backbone.stages[0].blocks[0].norm1.weight.mul_(1.5)
    refusing = IGQCalibrationHook(state_file=state_file)
    refusing.before_run(other)
    before = copy.deepcopy(other.model.state_dict())
    with pytest.raises(ValueError, match='other weights'):
        refusing.before_test(other)
    assert all(torch.equal(v, before[k]) for k, v in other.model.state_dict().items())

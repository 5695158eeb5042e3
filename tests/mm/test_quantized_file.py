"""mm models as *.igq.safetensors: the hook exports, the checkpoint loader reloads."""
import types

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import CheckpointLoader

import igq_plugin.mm.hook as hook_module
from igq_plugin.mm import IGQCalibrationHook, load_mm_quantized
from igq_plugin.mm.quantized_model import load_from_quantized_file
from igq_plugin.nn import QuantState, quantization_record

from .tiny_models import fake_runner_fields, no_source, tiny_batches, tiny_model_cfg

QUANT = dict(method='igq', w_bits=4, a_bits=4, groups=4)


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def fake_runner(tmp_path, quant=QUANT, seed=0, **model_changes):
    torch.manual_seed(seed)
    model_cfg = tiny_model_cfg(quant=quant)
    model_cfg.update(model_changes)
    model = MODELS.build(model_cfg).eval()
    return types.SimpleNamespace(model=model,
                                 **fake_runner_fields(model_cfg, default_scope='mmdet'),
                                 work_dir=str(tmp_path),
                                 test_loop=types.SimpleNamespace(dataloader=None),
                                 val_loop=types.SimpleNamespace(dataloader=None))


def calibrate_and_export(work, quant=QUANT):
    """A tiny detector calibrated by the hook, exported by it to ``work``."""
    runner = fake_runner(work, quant=quant)
    batches = tiny_batches(runner.model, count=1)
    original = hook_module.draw_calibration_batches, hook_module.build_calibration_source
    hook_module.draw_calibration_batches = lambda *a: batches
    hook_module.build_calibration_source = no_source
    try:
        hook = IGQCalibrationHook(export=True, save_state=False)
        hook.before_run(runner)
        hook.before_test(runner)
    finally:
        hook_module.draw_calibration_batches, hook_module.build_calibration_source = original
    return runner, batches, str(work / 'model.igq.safetensors')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The tiny detector calibrated by the hook (igq, allocated), exported by it."""
    init_default_scope('mmdet')
    return calibrate_and_export(tmp_path_factory.mktemp('work'))


def load_through_hook(runner, path, hook=None):
    """What mmengine's Runner.load_checkpoint does, with the hook in place."""
    hook = hook or IGQCalibrationHook()
    hook.before_run(runner)
    checkpoint = CheckpointLoader.load_checkpoint(path)
    hook.after_load_checkpoint(runner, checkpoint)
    runner.model.load_state_dict(checkpoint['state_dict'])
    hook.before_test(runner)
    return hook


def test_checkpoint_loader_evaluates_the_file_without_calibrating(exported, tmp_path,
                                                                  monkeypatch):
    calibrated, batches, path = exported
    monkeypatch.setattr(hook_module, 'calibrate_mm_model',
                        lambda *a, **k: pytest.fail('a quantized file must not be calibrated'))
    fresh = fake_runner(tmp_path, seed=1)  # other float weights
    hook = load_through_hook(fresh, path)
    assert hook.loaded_file == path
    assert quantization_record(fresh.model).state is QuantState.READY
    with torch.no_grad():
        for a, b in zip(calibrated.model.extract_feat(batches[0]['inputs']),
                        fresh.model.extract_feat(batches[0]['inputs'])):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_model_is_rebuilt_from_the_file_alone(exported):
    calibrated, batches, path = exported
    model = load_mm_quantized(path)
    with torch.no_grad():
        ours = model.extract_feat(batches[0]['inputs'])
        theirs = calibrated.model.extract_feat(batches[0]['inputs'])
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_igq_reparam_detector_is_rebuilt_from_the_file_alone(tmp_path):
    """The folded LayerNorms, projections and padding tokens come back from the file."""
    calibrated, batches, path = calibrate_and_export(tmp_path,
                                                     dict(QUANT, method='igq-reparam'))
    model = load_mm_quantized(path)
    assert quantization_record(model).folds == quantization_record(calibrated.model).folds
    with torch.no_grad():
        ours = model.extract_feat(batches[0]['inputs'])
        theirs = calibrated.model.extract_feat(batches[0]['inputs'])
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_reexport_of_the_rebuilt_model_is_byte_identical(exported, tmp_path):
    from igq_plugin import export_quantized
    _, _, path = exported
    again = str(tmp_path / 'again.igq.safetensors')
    export_quantized(load_mm_quantized(path), again)
    with open(path, 'rb') as a, open(again, 'rb') as b:
        assert a.read() == b.read()


def test_file_for_another_config_is_refused_by_name(exported, tmp_path):
    _, _, path = exported
    other = fake_runner(tmp_path, test_cfg=dict(tiny_model_cfg().test_cfg,
                                                rcnn=dict(score_thr=0.5, nms=dict(
                                                    type='nms', iou_threshold=0.5),
                                                    max_per_img=10, mask_thr_binary=0.5)))
    hook = IGQCalibrationHook()
    hook.before_run(other)
    with pytest.raises(ValueError, match='another model config.*test_cfg.rcnn'):
        hook.after_load_checkpoint(other, CheckpointLoader.load_checkpoint(path))


def test_file_with_other_settings_is_refused_by_name(exported, tmp_path):
    _, _, path = exported
    other = fake_runner(tmp_path, quant=dict(QUANT, a_bits=6))
    hook = IGQCalibrationHook()
    hook.before_run(other)
    with pytest.raises(ValueError, match='other settings.*a_bits'):
        hook.after_load_checkpoint(other, CheckpointLoader.load_checkpoint(path))
    assert quantization_record(other.model).state is QuantState.UNCALIBRATED


def test_state_file_and_quantized_checkpoint_conflict(exported, tmp_path):
    _, _, path = exported
    state = tmp_path / 'igq_state.pth'
    state.write_bytes(b'')
    runner = fake_runner(tmp_path)
    hook = IGQCalibrationHook(state_file=str(state))
    hook.before_run(runner)
    with pytest.raises(ValueError, match='remove one of them'):
        hook.after_load_checkpoint(runner, CheckpointLoader.load_checkpoint(path))


def test_quantized_file_given_as_state_file_is_refused(exported, tmp_path):
    _, _, path = exported
    runner = fake_runner(tmp_path)
    hook = IGQCalibrationHook(state_file=path)
    hook.before_run(runner)
    with pytest.raises(ValueError, match='a quantized model, not a calibrated state'):
        hook.before_test(runner)


def test_loader_refuses_a_run_without_the_hook(exported, monkeypatch):
    _, _, path = exported
    import igq_plugin.mm.quantized_model as quantized_model
    monkeypatch.setitem(quantized_model._expecting, 'hooks', 0)
    with pytest.raises(ValueError, match='IGQCalibrationHook'):
        load_from_quantized_file(path)


def test_float_checkpoint_still_goes_to_the_float_loader(tmp_path):
    path = tmp_path / 'float.pth'
    torch.save({'state_dict': {}}, path)
    assert CheckpointLoader._get_checkpoint_loader(str(path)) is not load_from_quantized_file
    assert CheckpointLoader._get_checkpoint_loader('w/m.igq.safetensors') is \
        load_from_quantized_file

import types

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

import igq_plugin.mm.hook as hook_module
from igq_plugin.mm import IGQCalibrationHook
from igq_plugin.nn import QuantState, quantization_record

from .tiny_models import fake_runner_fields, no_source, tiny_batches, tiny_model_cfg

QUANT = dict(method='igq-fixed', w_bits=4, a_bits=4, groups=4)


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def fake_runner(tmp_path, quant=QUANT):
    torch.manual_seed(0)
    model_cfg = tiny_model_cfg(quant=quant)
    model = MODELS.build(model_cfg)
    model.eval()
    return types.SimpleNamespace(model=model, **fake_runner_fields(model_cfg),
                                 work_dir=str(tmp_path),
                                 test_loop=types.SimpleNamespace(dataloader=None),
                                 val_loop=types.SimpleNamespace(dataloader=None))


def test_hook_calibrates_once_and_saves_state(tmp_path, monkeypatch):
    runner = fake_runner(tmp_path)
    batches = tiny_batches(runner.model, count=1)
    monkeypatch.setattr(hook_module, 'build_calibration_source', no_source)
    monkeypatch.setattr(hook_module, 'draw_calibration_batches', lambda *a: batches)
    calls = []
    real = hook_module.calibrate_mm_model
    monkeypatch.setattr(hook_module, 'calibrate_mm_model',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    hook = IGQCalibrationHook()
    hook.before_run(runner)
    for _ in range(3):  # before_val fires every epoch
        hook.before_val(runner)
    hook.before_test(runner)
    assert len(calls) == 1
    assert quantization_record(runner.model).state is QuantState.READY
    assert (tmp_path / 'igq_state.pth').is_file()

    # a second run loads the saved state instead of calibrating
    fresh = fake_runner(tmp_path)
    loader = IGQCalibrationHook(state_file=str(tmp_path / 'igq_state.pth'))
    loader.before_run(fresh)
    loader.before_test(fresh)
    assert len(calls) == 1
    with torch.no_grad():
        for a, b in zip(runner.model.extract_feat(batches[0]['inputs']),
                        fresh.model.extract_feat(batches[0]['inputs'])):
            assert torch.equal(a, b)


def save_calibrated_state(tmp_path, monkeypatch):
    """Calibrate the tiny detector through the hook; the state lands in ``tmp_path``."""
    runner = fake_runner(tmp_path)
    monkeypatch.setattr(hook_module, 'build_calibration_source', no_source)
    monkeypatch.setattr(hook_module, 'draw_calibration_batches',
                        lambda *a: tiny_batches(runner.model, count=1))
    hook = IGQCalibrationHook()
    hook.before_run(runner)
    hook.before_test(runner)


def test_state_from_another_config_is_refused_before_evaluation(tmp_path, monkeypatch):
    save_calibrated_state(tmp_path, monkeypatch)
    other = fake_runner(tmp_path, dict(QUANT, a_bits=6))
    loader = IGQCalibrationHook(state_file=str(tmp_path / 'igq_state.pth'))
    loader.before_run(other)
    with pytest.raises(ValueError, match="other settings .*a_bits: state 4, now 6"):
        loader.before_test(other)
    assert quantization_record(other.model).state is QuantState.UNCALIBRATED


def test_state_from_another_model_config_names_the_difference(tmp_path, monkeypatch):
    save_calibrated_state(tmp_path, monkeypatch)
    other = fake_runner(tmp_path)
    other.cfg.model.test_cfg.rcnn.score_thr = 0.3
    loader = IGQCalibrationHook(state_file=str(tmp_path / 'igq_state.pth'))
    loader.before_run(other)
    with pytest.raises(ValueError, match=r'another model config \(.*test_cfg.rcnn.score_thr: '
                                         r'state 0.05, now 0.3\)'):
        loader.before_test(other)


def test_checkpoint_that_does_not_fit_is_refused_before_calibration(tmp_path):
    runner = fake_runner(tmp_path)
    hook = IGQCalibrationHook()
    hook.before_run(runner)
    float_state = MODELS.build(tiny_model_cfg()).state_dict()
    good = dict(state_dict=dict(float_state))
    hook.after_load_checkpoint(runner, good)  # fills in the quantizer buffers
    assert set(good['state_dict']) == set(runner.model.state_dict())
    missing = {k: v for k, v in float_state.items() if not k.startswith('roi_head.bbox_head')}
    with pytest.raises(ValueError, match=r'float tensors missing .*roi_head.bbox_head'):
        hook.after_load_checkpoint(runner, dict(state_dict=missing))
    extra = dict(float_state, **{'roi_head.bbox_head.1.fc_cls.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 unexpected \['roi_head.bbox_head.1.fc_cls"):
        hook.after_load_checkpoint(runner, dict(state_dict=extra))


@pytest.mark.parametrize('content,message', [
    (b'not a torch file', 'not a readable IGQ quantization state'),
    ('tensor', 'is not an IGQ quantization state'),
    ('dict', r"is not an IGQ quantization state .*keys \['weights'\]"),
])
def test_bad_state_files_are_named(tmp_path, content, message):
    path = tmp_path / 'state.pth'
    if content == 'tensor':
        torch.save(torch.zeros(3), path)
    elif content == 'dict':
        torch.save(dict(weights=torch.zeros(3)), path)
    else:
        path.write_bytes(content)
    runner = fake_runner(tmp_path)
    loader = IGQCalibrationHook(state_file=str(path))
    loader.before_run(runner)
    with pytest.raises(ValueError, match=message):
        loader.before_test(runner)
    assert quantization_record(runner.model).state is QuantState.UNCALIBRATED


class TestBadInput:
    def test_zero_calibration_images(self):
        with pytest.raises(ValueError, match='num_images=0'):
            IGQCalibrationHook(num_images=0)

    def test_unknown_dataloader(self):
        with pytest.raises(ValueError, match="dataloader='calib'"):
            IGQCalibrationHook(dataloader='calib')

    def test_float_backbone(self, tmp_path):
        model_cfg = tiny_model_cfg()
        runner = types.SimpleNamespace(model=MODELS.build(model_cfg),
                                       **fake_runner_fields(model_cfg), work_dir=str(tmp_path))
        with pytest.raises(TypeError, match='IGQBackbone'):
            IGQCalibrationHook().before_run(runner)

    @pytest.mark.parametrize('method', ['repq', 'upper-bound'])
    def test_export_of_a_method_without_export_is_refused_before_calibration(self, tmp_path,
                                                                              method):
        runner = fake_runner(tmp_path, quant=dict(QUANT, method=method))
        with pytest.raises(ValueError, match=f"export=True, but method='{method}' cannot"):
            IGQCalibrationHook(export=True).before_run(runner)
        assert quantization_record(runner.model) is None  # nothing converted

    @pytest.mark.parametrize('rois', [0, -5, 2.5, True, '100'])
    def test_search_rois(self, rois):
        with pytest.raises(ValueError, match=f'search_rois={rois!r}: allowed are None'):
            IGQCalibrationHook(search_rois=rois)

    @pytest.mark.parametrize('argument,key', [('quantize_neck', 'neck'),
                                              ('quantize_roi_head', 'roi_head')])
    def test_moved_arguments_point_to_their_key(self, argument, key):
        with pytest.raises(ValueError, match=f'model.backbone.quant.{key}'):
            IGQCalibrationHook(**{argument: True})

    def test_igq_without_a_roi_or_decode_head(self, tmp_path):
        runner = fake_runner(tmp_path, dict(QUANT, method='igq'))
        runner.model = types.SimpleNamespace(backbone=runner.model.backbone)
        with pytest.raises(TypeError, match='igq-fixed'):
            IGQCalibrationHook().before_run(runner)

    def test_missing_state_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match='nope.pth'):
            IGQCalibrationHook(state_file=str(tmp_path / 'nope.pth')).before_run(
                fake_runner(tmp_path))


def test_unknown_arguments_are_refused_by_name():
    # e.g. a host-allocator switch: process-wide settings are not the hook's business
    with pytest.raises(TypeError, match="unexpected argument 'reuse_freed_memory'"):
        IGQCalibrationHook(reuse_freed_memory=True)

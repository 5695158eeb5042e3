import types

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import igq_plugin.mm.hook as hook_module
from igq_plugin.mm import IGQCalibrationHook, QuantState

from .tiny_models import tiny_batches, tiny_model_cfg

QUANT = dict(method='igq-fixed', w_bits=4, a_bits=4, groups=4)


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def fake_runner(tmp_path, quant=QUANT):
    torch.manual_seed(0)
    model_cfg = tiny_model_cfg(quant=quant)
    model = MODELS.build(model_cfg)
    model.eval()
    return types.SimpleNamespace(model=model, cfg=Config(dict(model=model_cfg)),
                                 work_dir=str(tmp_path),
                                 test_loop=types.SimpleNamespace(dataloader=None),
                                 val_loop=types.SimpleNamespace(dataloader=None))


def test_hook_calibrates_once_and_saves_state(tmp_path, monkeypatch):
    runner = fake_runner(tmp_path)
    batches = tiny_batches(runner.model, count=1)
    monkeypatch.setattr(hook_module, 'take_calibration_batches', lambda *a: batches)
    calls = []
    real = hook_module.calibrate_model
    monkeypatch.setattr(hook_module, 'calibrate_model',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    hook = IGQCalibrationHook()
    hook.before_run(runner)
    for _ in range(3):  # before_val fires every epoch
        hook.before_val(runner)
    hook.before_test(runner)
    assert len(calls) == 1
    assert runner.model.backbone.igq_state == QuantState.READY
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


def test_state_from_another_config_is_refused_before_evaluation(tmp_path, monkeypatch):
    runner = fake_runner(tmp_path)
    monkeypatch.setattr(hook_module, 'take_calibration_batches',
                        lambda *a: tiny_batches(runner.model, count=1))
    hook = IGQCalibrationHook()
    hook.before_run(runner)
    hook.before_test(runner)
    other = fake_runner(tmp_path, dict(QUANT, a_bits=6))
    loader = IGQCalibrationHook(state_file=str(tmp_path / 'igq_state.pth'))
    loader.before_run(other)
    with pytest.raises(ValueError, match='calibrated for model config'):
        loader.before_test(other)
    assert other.model.backbone.igq_state == QuantState.UNCALIBRATED


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
                                       cfg=Config(dict(model=model_cfg)), work_dir=str(tmp_path))
        with pytest.raises(TypeError, match='IGQBackbone'):
            IGQCalibrationHook().before_run(runner)

    @pytest.mark.parametrize('rois', [0, -5, 2.5, True, '100'])
    def test_search_rois(self, rois):
        with pytest.raises(ValueError, match=f'search_rois={rois!r}: allowed are None'):
            IGQCalibrationHook(search_rois=rois)

    def test_missing_state_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match='nope.pth'):
            IGQCalibrationHook(state_file=str(tmp_path / 'nope.pth')).before_run(
                fake_runner(tmp_path))

"""UperNet Swin / ViT segmentors: one conversion path, per-pixel search, state files."""
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

import igq_plugin.mm  # noqa: F401
from igq_plugin import check_quantized, float_run
from igq_plugin.mm import calibrate_mm_model, quantize_mm_model
from igq_plugin.mm.convert import fit_float_checkpoint
from igq_plugin.mm.predictors import PixelClassPredictor
from igq_plugin.nn import (QuantConv2d, QuantLinear, QuantSoftmax, activation_quantizers,
                           export_state, igq_quantizers, import_state)
from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.search import sensitivity_tables

from ..allocation_checks import assert_same_optimum
from .tiny_segmentors import SWIN_UPERNET, VIT_UPERNET, tiny_seg_batches, tiny_segmentor_cfg

QUANT = dict(method='igq', w_bits=4, a_bits=4, groups=4, candidates=(1, 2, 4))
CONFIGS = {'swin': SWIN_UPERNET, 'vit': VIT_UPERNET}


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope('mmseg')


def build_pair(arch, quant=QUANT, seed=0):
    torch.manual_seed(seed)
    float_model = MODELS.build(tiny_segmentor_cfg(CONFIGS[arch]))
    float_model.eval()
    model = MODELS.build(tiny_segmentor_cfg(CONFIGS[arch], quant))
    model.eval()
    quantize_mm_model(model)
    state = dict(state_dict=float_model.state_dict())
    fit_float_checkpoint(model, state)
    model.load_state_dict(state['state_dict'], strict=True)
    return float_model, model


def logits(model, batches):
    with torch.no_grad():
        return [model.encode_decode(b['inputs'], [s.metainfo for s in b['data_samples']])
                for b in batches]


@pytest.mark.parametrize('arch', sorted(CONFIGS))
def test_float_mode_bit_identical_to_the_unwrapped_segmentor(arch):
    float_model, model = build_pair(arch)
    batches = tiny_seg_batches(float_model)
    with float_run(model):
        for ours, theirs in zip(logits(model, batches), logits(float_model, batches)):
            assert torch.equal(ours, theirs)


@pytest.mark.parametrize('arch', sorted(CONFIGS))
def test_every_linear_softmax_and_decode_conv_quantized_and_none_in_float(arch):
    float_model, model = build_pair(arch)
    linears = sum(isinstance(m, torch.nn.Linear) for m in float_model.backbone.modules())
    assert sum(isinstance(m, QuantLinear) for m in model.backbone.modules()) == linears
    attention = sum(isinstance(m, (torch.nn.Softmax, torch.nn.MultiheadAttention))
                    for m in float_model.backbone.modules())
    assert sum(isinstance(m, QuantSoftmax) for m in model.backbone.modules()) == attention
    head_convs = [n for n, m in float_model.decode_head.named_modules()
                  if isinstance(m, torch.nn.Conv2d) and n != 'conv_seg']
    for name in head_convs:
        assert isinstance(model.decode_head.get_submodule(name), QuantConv2d), name
    assert not isinstance(model.decode_head.conv_seg, QuantConv2d)  # the classifier
    assert not any(isinstance(m, QuantConv2d) for m in model.auxiliary_head.modules())
    batches = tiny_seg_batches(float_model)
    report = calibrate_mm_model(model, batches, progress=None)
    assert check_quantized(model) == len(activation_quantizers(model))
    assert report.allocation and report.allocated_gbops <= report.budget_gbops
    changed = {}
    hooks = [q.register_forward_hook(lambda m, i, o, n=n: changed.__setitem__(
        n, not torch.equal(i[0], o))) for n, q in activation_quantizers(model).items()]
    logits(model, batches)
    assert changed and all(changed.values()), [n for n, c in changed.items() if not c]
    changed.clear()
    with float_run(model):
        logits(model, batches)
    assert changed and not any(changed.values())
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize('arch', sorted(CONFIGS))
def test_state_roundtrip_reproduces_outputs(arch):
    float_model, model = build_pair(arch, dict(QUANT, method='igq-fixed'))
    batches = tiny_seg_batches(float_model)
    calibrate_mm_model(model, batches, progress=None)
    expected = logits(model, batches)
    _, fresh = build_pair(arch, dict(QUANT, method='igq-fixed'))
    import_state(fresh, export_state(model))
    with float_run(fresh), quant_mode(fresh, QuantMode.QUANTIZED):
        for ours, theirs in zip(logits(fresh, batches), expected):
            assert torch.equal(ours, theirs)


def test_pixel_search_with_cached_prefix_equals_naive():
    float_model, model = build_pair('swin', dict(QUANT, method='igq-fixed'))
    batches = tiny_seg_batches(float_model)
    calibrate_mm_model(model, batches, progress=None)
    layers = igq_quantizers(model)
    assert any(n.startswith('decode_head.') for n in layers)
    with float_run(model):
        fast_predictor = PixelClassPredictor(model, batches)
        naive_predictor = PixelClassPredictor(model, batches, reuse_prefix=False)
    from igq_plugin.nn import QuantState, set_quant_state
    set_quant_state(model, QuantState.CALIBRATING)
    fast = sensitivity_tables(model, layers, fast_predictor)
    naive = sensitivity_tables(model, layers, naive_predictor)
    for name in naive:
        for groups, value in naive[name].items():
            assert fast[name][groups] == pytest.approx(value, rel=1e-4, abs=1e-8), (name, groups)
    assert_same_optimum(layers, fast, naive, g_avgs=(2,))
    probabilities = naive_predictor.predict(None)[0]
    assert probabilities.shape == (16 * 16, 4)  # the decode head's 1/4 resolution


def fake_runner(tmp_path, model_cfg, scope):
    import types

    from .tiny_models import fake_runner_fields
    init_default_scope(scope)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.eval()
    return types.SimpleNamespace(model=model, **fake_runner_fields(model_cfg),
                                 work_dir=str(tmp_path),
                                 test_loop=types.SimpleNamespace(dataloader=None))


def test_hook_calibrates_a_segmentor_once_and_refuses_a_detector_state(tmp_path, monkeypatch):
    import igq_plugin.mm.hook as hook_module
    from igq_plugin.mm import IGQCalibrationHook
    from igq_plugin.nn import QuantState, quantization_record

    from .tiny_models import no_source, tiny_batches, tiny_model_cfg
    quant = dict(QUANT, method='igq-fixed')
    detector = fake_runner(tmp_path / 'det', tiny_model_cfg(quant=quant), 'mmdet')
    (tmp_path / 'det').mkdir()
    monkeypatch.setattr(hook_module, 'build_calibration_source', no_source)
    monkeypatch.setattr(hook_module, 'draw_calibration_batches',
                        lambda *a: tiny_batches(detector.model, count=1))
    hook = IGQCalibrationHook()
    hook.before_run(detector)
    hook.before_test(detector)

    segmentor = fake_runner(tmp_path, tiny_segmentor_cfg(quant=quant), 'mmseg')
    monkeypatch.setattr(hook_module, 'build_calibration_source', no_source)
    monkeypatch.setattr(hook_module, 'draw_calibration_batches',
                        lambda *a: tiny_seg_batches(segmentor.model, count=1))
    calls = []
    real = hook_module.calibrate_mm_model
    monkeypatch.setattr(hook_module, 'calibrate_mm_model',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    hook = IGQCalibrationHook()
    hook.before_run(segmentor)
    for _ in range(3):
        hook.before_test(segmentor)
    assert len(calls) == 1 and (tmp_path / 'igq_state.pth').is_file()
    assert quantization_record(segmentor.model).state is QuantState.READY

    other = fake_runner(tmp_path, tiny_segmentor_cfg(quant=quant), 'mmseg')
    loader = IGQCalibrationHook(state_file=str(tmp_path / 'det' / 'igq_state.pth'))
    loader.before_run(other)
    with pytest.raises(ValueError, match=r"another model config \(.*type: state 'MaskRCNN', "
                                         r"now 'EncoderDecoder'"):
        loader.before_test(other)
    assert quantization_record(other.model).state is QuantState.UNCALIBRATED


def test_bad_segmentor_input():
    from igq_plugin.mm import IGQCalibrationHook
    with pytest.raises(ValueError, match="wrapped_type='ResNetV1c'"):
        cfg = tiny_segmentor_cfg()
        cfg.backbone = dict(type='IGQBackbone', wrapped_type='ResNetV1c', quant=QUANT, depth=18)
        MODELS.build(cfg)
    model = MODELS.build(tiny_segmentor_cfg(quant=QUANT))
    quantize_mm_model(model)
    with pytest.raises(ValueError, match='empty calibration'):
        calibrate_mm_model(model, [], progress=None)
    with pytest.raises(TypeError, match='search_rois=50 applies to two-stage detectors'):
        calibrate_mm_model(model, tiny_seg_batches(model, count=1), progress=None,
                           search_rois=50)
    import types
    runner = types.SimpleNamespace(model=model)
    with pytest.raises(TypeError, match='search_rois=50 applies'):
        IGQCalibrationHook(search_rois=50).before_run(runner)

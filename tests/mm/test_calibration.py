import copy

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

import igq_plugin.mm  # noqa: F401
from igq_plugin import check_quantized, float_run
from igq_plugin.mm import calibrate_mm_model, quantize_mm_model
from igq_plugin.mm.predictors import RoIClassPredictor
from igq_plugin.nn import (QuantState, activation_quantizers, export_state, float_layer_count,
                           igq_quantizers, import_state, quantization_record,
                           quantized_layer_count, set_quant_state)
from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.search import kl_divergence

from .tiny_models import CASCADE_CONFIG, tiny_batches, tiny_model_cfg

# two candidates keep the (layers x candidates) sensitivity search of these tests short
QUANT = dict(method='igq', w_bits=4, a_bits=4, groups=4, candidates=(1, 4))


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def build_pair(quant=QUANT, config=None, roi_head=False, seed=0):
    """(float detector, quantized detector with the same weights)."""
    kwargs = {} if config is None else dict(config=config)
    torch.manual_seed(seed)
    float_model = MODELS.build(tiny_model_cfg(**kwargs))
    float_model.eval()
    model = MODELS.build(tiny_model_cfg(quant=dict(quant, roi_head=roi_head), **kwargs))
    model.eval()
    quantize_mm_model(model)
    result = model.load_state_dict(float_model.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all('quantizer' in key for key in result.missing_keys)
    return float_model, model


def features(model, batches):
    with torch.no_grad():
        return [torch.cat([f.flatten() for f in model.extract_feat(b['inputs'])]) for b in batches]


def test_float_mode_bit_identical_to_unwrapped_detector():
    float_model, model = build_pair()
    batches = tiny_batches(float_model)
    with float_run(model):
        for ours, theirs in zip(features(model, batches), features(float_model, batches)):
            assert torch.equal(ours, theirs)


def test_every_layer_quantized_in_quantized_mode_and_none_in_float_mode():
    float_model, model = build_pair()
    batches = tiny_batches(float_model)
    calibrate_mm_model(model, batches, progress=None)
    assert float_layer_count(model.backbone) == {} and float_layer_count(model.neck) == {}
    assert quantized_layer_count(model.neck) == {'QuantConv2d': 8}  # 4 lateral + 4 fpn convs
    quantizers = activation_quantizers(model)
    assert check_quantized(model) == len(quantizers)
    changed = {}
    hooks = [q.register_forward_hook(lambda m, i, o, n=n: changed.__setitem__(
        n, not torch.equal(i[0], o))) for n, q in quantizers.items()]
    features(model, batches)
    assert changed and all(changed.values()), [n for n, c in changed.items() if not c]
    changed.clear()
    with float_run(model):  # the guard refuses float otherwise
        features(model, batches)
    assert changed and not any(changed.values())
    for hook in hooks:
        hook.remove()


def test_allocation_meets_budget_and_logs_rows():
    float_model, model = build_pair()
    report = calibrate_mm_model(model, tiny_batches(float_model), progress=None)
    assert report.allocation is not None
    assert report.allocated_gbops <= report.budget_gbops < report.gbops  # + fixed-range input
    assert set(report.allocation) == set(igq_quantizers(model))
    assert {r['layer'] for r in report.rows} == set(activation_quantizers(model))
    assert all(r['bops'] > 0 for r in report.rows)


def roi_kl(float_model, model, batches):
    predictor = RoIClassPredictor(float_model, batches)  # the float model's RoIs
    reference = predictor.predict(None)
    predictor.model = predictor.features.model = model
    outputs = predictor.predict(None)
    return float(torch.cat([kl_divergence(r, o) for r, o in zip(reference, outputs)]).mean())


def test_w8a8_stays_close_to_float_and_w4a4_does_not():
    batches = None
    kls = {}
    for bits in (8, 4):
        float_model, model = build_pair(dict(QUANT, w_bits=bits, a_bits=bits, method='igq-fixed',
                                             bounds='envelope'))
        batches = batches or tiny_batches(float_model)
        calibrate_mm_model(model, batches, progress=None)
        kls[bits] = roi_kl(float_model, model, batches)
    assert kls[8] < 0.01 and kls[4] > kls[8], kls


def test_state_roundtrip_reproduces_outputs_and_rejects_other_models():
    float_model, model = build_pair()
    batches = tiny_batches(float_model)
    calibrate_mm_model(model, batches, progress=None)
    expected = features(model, batches)
    state = export_state(model)
    _, fresh = build_pair()
    import_state(fresh, state)
    set_quant_state(fresh, QuantState.CALIBRATING)
    with quant_mode(fresh, QuantMode.QUANTIZED):
        for ours, theirs in zip(features(fresh, batches), expected):
            assert torch.equal(ours, theirs)
    _, other = build_pair(dict(QUANT, method='static-group'))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match='does not match this model'):
        import_state(other, state)
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cascade_with_roi_head_quantized():
    float_model, model = build_pair(dict(QUANT, method='igq-fixed'), config=CASCADE_CONFIG,
                                    roi_head=True)
    batches = tiny_batches(float_model, count=1)
    calibrate_mm_model(model, batches, progress=None)
    assert any(name.startswith('roi_head.bbox_head.2') for name in igq_quantizers(model))
    predictor = RoIClassPredictor(float_model, batches)
    assert predictor.cascade and len(predictor.stage_rois[0]) == 3
    assert 0 < roi_kl(float_model, model, batches) < float('inf')


def test_full_detector_protocol_keeps_g_avg_where_the_search_is_blind():
    """RPN and mask-head layers do not change the per-RoI class scores on fixed float
    proposals: the allocation keeps them at G_avg instead of the cheapest G."""
    torch.manual_seed(0)
    float_model = MODELS.build(tiny_model_cfg()).eval()
    model = MODELS.build(tiny_model_cfg(quant=dict(QUANT, rpn_head=True, roi_head=True))).eval()
    quantize_mm_model(model)
    model.load_state_dict(float_model.state_dict(), strict=False)
    names = list(igq_quantizers(model))
    assert any(n.startswith('rpn_head.') for n in names)
    assert any(n.startswith('roi_head.mask_head.') for n in names)
    report = calibrate_mm_model(model, tiny_batches(float_model, count=1), progress=None,
                                sensitivity='exact')
    blind = set(report.unmeasured)
    # and box regression, and FPN levels that no RoI of this small image is pooled from
    assert {n for n in names if n.startswith(('rpn_head.', 'roi_head.mask_head.'))
            or '.fc_reg.' in n} <= blind
    assert all(n.startswith(('rpn_head.', 'roi_head.mask_head.', 'neck.'))
               or '.fc_reg.' in n for n in blind)
    assert all(report.allocation[n] == 4 for n in blind)
    assert any(report.allocation[n] != 4 for n in names if n not in blind)


def test_empty_calibration_set():
    _, model = build_pair()
    with pytest.raises(ValueError, match='empty calibration'):
        calibrate_mm_model(model, [], progress=None)


def test_search_rois_is_refused_for_a_segmentor():
    import types

    from igq_plugin.mm.predictors import check_predictable
    segmentor = types.SimpleNamespace(encode_decode=lambda inputs, metas: None)
    check_predictable(segmentor)
    with pytest.raises(TypeError, match='search_rois=100 applies to two-stage detectors'):
        check_predictable(segmentor, search_rois=100)


def test_bad_search_rois_fails_before_calibrating():
    float_model, model = build_pair()
    with pytest.raises(ValueError, match='search_rois=0: allowed are None'):
        calibrate_mm_model(model, tiny_batches(float_model), progress=None, search_rois=0)
    assert quantization_record(model).state is QuantState.UNCALIBRATED


def test_calibration_images_outside_the_dataset_are_refused():
    from types import SimpleNamespace
    from igq_plugin.mm.calibration import take_calibration_batches
    loader = SimpleNamespace(dataset=[0, 1, 2], collate_fn=lambda x: x)
    with pytest.raises(ValueError, match='start=-1'):
        take_calibration_batches(loader, 1, None, start=-1)
    with pytest.raises(ValueError, match='only 3 images'):
        take_calibration_batches(loader, 2, None, start=2)
    with pytest.raises(ValueError, match='num_images=0'):
        take_calibration_batches(loader, 0, None)

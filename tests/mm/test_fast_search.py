"""The sensitivity search with cached float prefixes (``RoIClassPredictor.predict(layer)``)
must give the naive search's numbers, hence an equally good allocation."""
import pytest
import torch
from mmengine.registry import init_default_scope

from igq_plugin.mm import calibrate_mm_model
from igq_plugin.mm.predictors import RoIClassPredictor
from igq_plugin.nn import QuantState, igq_quantizers, set_quant_state
from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.search import sensitivity_tables

from ..allocation_checks import assert_same_optimum
from .test_calibration import build_pair
from .tiny_models import CASCADE_CONFIG, tiny_batches

QUANT = dict(method='igq', w_bits=4, a_bits=4, groups=4, candidates=(1, 2, 4, 8))


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def calibrated(config=None, roi_head=False):
    kwargs = {} if config is None else dict(config=config)
    float_model, model = build_pair(quant=dict(QUANT, method='igq-fixed'), roi_head=roi_head,
                                    **kwargs)
    batches = tiny_batches(float_model, count=2)
    calibrate_mm_model(model, batches, progress=None)
    set_quant_state(model, QuantState.CALIBRATING)  # as during the search
    return model, batches


@pytest.mark.parametrize('config,roi_head,search_rois', [(None, False, None),
                                                         (CASCADE_CONFIG, True, None),
                                                         (None, False, 20)])
def test_fast_search_equals_naive_search(config, roi_head, search_rois):
    model, batches = calibrated(config, roi_head)
    layers = igq_quantizers(model)
    assert any(n.startswith('backbone.stages.') and '.downsample.' in n for n in layers)
    assert any(n.startswith('neck.') for n in layers)
    assert any(n.startswith('roi_head.') for n in layers) == roi_head
    predictor = RoIClassPredictor(model, batches, search_rois=search_rois)
    assert predictor.fixed_extractors is not None  # RoIAlign as precomputed matrices
    fast = sensitivity_tables(model, layers, predictor)
    naive = sensitivity_tables(model, layers, RoIClassPredictor(
        model, batches, reuse_prefix=False, search_rois=search_rois))
    assert fast.keys() == naive.keys()
    # equal up to float summation order (the sparse RoI pooling sums in another order;
    # 1e-7 is the resolution of a float32 KL)
    for name in naive:
        for groups, value in naive[name].items():
            assert fast[name][groups] == pytest.approx(value, rel=1e-2, abs=1e-7), (name, groups)
    assert any(v > 0 for table in naive.values() for v in table.values())
    # every K and V operand is measured on its own (they were never quantized before)
    for name, table in naive.items():
        if name.endswith(('output_quantizer.k', 'output_quantizer.v')):
            assert max(table.values()) > 0, name
    assert_same_optimum(layers, fast, naive)


@pytest.mark.parametrize('config', [None, CASCADE_CONFIG])
def test_search_rois_are_the_best_scored_float_proposals(config):
    model, batches = calibrated(config)
    full = RoIClassPredictor(model, batches)
    top = RoIClassPredictor(model, batches, search_rois=5)
    with torch.no_grad(), quant_mode(model, QuantMode.FLOAT):
        proposals = model.rpn_head.predict(model.extract_feat(batches[0]['inputs']),
                                           batches[0]['data_samples'], rescale=False)[0]
        full_probs, top_probs = full.predict(None)[0], top.predict(None)[0]
    assert len(proposals) > 5 and bool((proposals.scores[:-1] >= proposals.scores[1:]).all())
    for stage, (stage_full, stage_top) in enumerate(zip(full.stage_rois[0], top.stage_rois[0])):
        assert stage_top.shape == (5, 5)
        if stage == 0:  # the proposals themselves: copied, not computed
            assert torch.equal(stage_top, stage_full[:5])
        else:
            # Cascade: refined by the same regression. A batch of 5 RoIs and one of all
            # sum the head's float32 products (fan-in ~1e4) in another order, so the
            # boxes agree to ~sqrt(fan-in) * eps relative, far below a pixel.
            torch.testing.assert_close(stage_top, stage_full[:5], rtol=1e-4, atol=1e-3)
    # class probabilities in [0, 1], through the same float32 sums
    torch.testing.assert_close(top_probs, full_probs[:5], rtol=0, atol=1e-5)
    everything = RoIClassPredictor(model, batches, search_rois=10 ** 6)
    assert torch.equal(everything.stage_rois[0][0], full.stage_rois[0][0])


def test_cached_float_features_equal_a_full_forward():
    """A neck or head layer of the search runs on cached float outputs: with every
    quantizer in float mode they are what a full forward computes."""
    model, batches = calibrated()
    predictor = RoIClassPredictor(model, batches)
    with torch.no_grad(), quant_mode(model, QuantMode.FLOAT):
        full = model.extract_feat(batches[1]['inputs'])
        for layer in ('neck.fpn_convs.0.conv.input_quantizer',
                      'roi_head.bbox_head.shared_fcs.0.input_quantizer', None):
            cached = predictor.features(1, layer)
            assert len(cached) == len(full)
            for ours, theirs in zip(cached, full):
                # the same modules on the same inputs in one process: the same bits
                assert torch.equal(ours, theirs), layer

"""The sensitivity search with cached float prefixes (``RoIClassPredictor.predict(layer)``)
must give the naive search's numbers, hence the same allocation."""
import pytest
import torch
from mmengine.registry import init_default_scope

from igq_plugin.mm import calibrate_mm_model
from igq_plugin.mm.predictors import RoIClassPredictor
from igq_plugin.mm.resume import SwinPrefixCache, layer_position
from igq_plugin.nn import QuantState, igq_quantizers, set_quant_state
from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.search import allocate_groups, sensitivity_tables

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
    assert predictor.prefix is not None
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
    for g_avg in (2, 4):
        assert (allocate_groups(layers, fast, g_avg=g_avg).groups
                == allocate_groups(layers, naive, g_avg=g_avg).groups)


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
    for stage_full, stage_top in zip(full.stage_rois[0], top.stage_rois[0]):
        assert stage_top.shape == (5, 5)
        assert torch.equal(stage_top, stage_full[:5])  # Cascade: refined the same way
    assert torch.allclose(top_probs, full_probs[:5], atol=1e-6)
    everything = RoIClassPredictor(model, batches, search_rois=10 ** 6)
    assert torch.equal(everything.stage_rois[0][0], full.stage_rois[0][0])


def test_resumed_backbone_equals_full_forward_from_every_block():
    model, batches = calibrated()
    backbone = model.backbone
    images = [b['inputs'] for b in batches]
    with torch.no_grad(), quant_mode(model, QuantMode.FLOAT):
        cache = SwinPrefixCache(backbone, images)
        full = backbone(images[1])
        positions = {layer_position(backbone, n[len('backbone.'):])
                     for n in igq_quantizers(model) if n.startswith('backbone.')}
        assert {(0, 0), (0, 1), (2, 1), (3, 0)} <= positions  # (0, 1): stage 0's merging
        positions.add(None)  # the patch embedding (a fixed-range quantizer)
        for position in positions:
            resumed = cache.forward_from(1, position, images[1])
            assert len(resumed) == len(full)
            for ours, theirs in zip(resumed, full):
                assert torch.equal(ours, theirs), position


def test_layer_position_of_names():
    model, _ = calibrated()
    backbone = model.backbone
    assert layer_position(backbone, 'patch_embed.projection.input_quantizer') is None
    assert layer_position(backbone, 'stages.2.blocks.1.attn.w_msa.softmax.quantizer') == (2, 1)
    assert layer_position(backbone, 'stages.1.downsample.reduction.input_quantizer') == (1, 1)

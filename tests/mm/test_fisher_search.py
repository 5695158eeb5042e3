"""The ``'fisher'`` sensitivity estimator on tiny mm models: a table for every IGQ
quantizer (Q, K, V and softmax included), the same unmeasured layers as the exact
search and the same ranking, and the hook's ``sensitivity`` argument."""
import types

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope
from scipy.stats import spearmanr

import igq_plugin.mm.hook as hook_module
from igq_plugin import float_run
from igq_plugin.mm import IGQCalibrationHook, calibrate_mm_model, quantize_mm_model
from igq_plugin.mm.predictors import build_predictor
from igq_plugin.nn import QuantState, igq_quantizers, set_quant_state
from igq_plugin.search import FisherPredictor, fisher_tables, sensitivity_tables

from .test_calibration import build_pair
from .tiny_models import (CASCADE_CONFIG, fake_runner_fields, no_source, tiny_batches,
                          tiny_model_cfg)
from .tiny_segmentors import SWIN_UPERNET, VIT_UPERNET, tiny_seg_batches, tiny_segmentor_cfg

# three candidates keep the exact search these tests compare against short
QUANT = dict(method='igq-fixed', w_bits=4, a_bits=4, groups=2, candidates=(1, 2, 4))


def detector(config=None):
    init_default_scope('mmdet')
    _, model = build_pair(quant=QUANT, roi_head=True,
                          **({} if config is None else dict(config=config)))
    return model, tiny_batches(model, count=2)


def segmentor(config):
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(tiny_segmentor_cfg(config, quant=QUANT)).eval()
    quantize_mm_model(model)
    return model, tiny_seg_batches(model, count=2)


def both_tables(model, batches):
    calibrate_mm_model(model, batches, progress=None)
    set_quant_state(model, QuantState.CALIBRATING)  # as during the search
    layers = igq_quantizers(model)
    with float_run(model):
        predictor = build_predictor(model, batches)
    assert isinstance(predictor, FisherPredictor)
    return (layers, sensitivity_tables(model, layers, predictor),
            fisher_tables(model, layers, predictor, samples=4))


@pytest.mark.parametrize('build,config', [(detector, None), (detector, CASCADE_CONFIG),
                                          (segmentor, VIT_UPERNET), (segmentor, SWIN_UPERNET)],
                         ids=['mask-rcnn', 'cascade', 'upernet-vit', 'upernet-swin'])
def test_fisher_tables_for_every_quantizer_rank_like_the_exact_ones(build, config):
    layers, exact, fisher = both_tables(*build(config))
    assert fisher.keys() == exact.keys() == layers.keys()
    for name, quantizer in layers.items():
        assert set(fisher[name]) == set(quantizer.candidates), name
        assert all(v >= 0 for v in fisher[name].values()), name
    # the layers the compared distributions ignore (RPN, mask head, box regression,
    # FPN levels no RoI is pooled from, auxiliary head) are the same for both
    constant = {n for n, table in exact.items() if len(set(table.values())) == 1}
    assert constant == {n for n, table in fisher.items() if len(set(table.values())) == 1}
    measured = [n for n in layers if n not in constant]
    kinds = ('.softmax.quantizer', 'output_quantizer.q', 'output_quantizer.k',
             'output_quantizer.v', 'qkv_quantizer.q', 'qkv_quantizer.k', 'qkv_quantizer.v')
    assert {k for k in kinds for n in measured if n.endswith(k)} >= {'.softmax.quantizer'}
    assert sum(n.endswith(kinds[1:]) for n in measured) >= 3  # Q, K and V operands
    if build is detector:
        assert any(n.startswith('roi_head.bbox_head') for n in measured)
    # over every (layer, G), the estimate orders the sensitivities like the exact KL
    pairs = [(exact[n][g], fisher[n][g]) for n in measured for g in layers[n].candidates]
    assert spearmanr(*zip(*pairs))[0] > 0.9


def fake_runner(tmp_path, model_cfg):
    torch.manual_seed(0)
    model = MODELS.build(model_cfg).eval()
    return types.SimpleNamespace(model=model, **fake_runner_fields(model_cfg),
                                 work_dir=str(tmp_path),
                                 test_loop=types.SimpleNamespace(dataloader=None))


def test_hook_runs_the_fisher_search(tmp_path, monkeypatch):
    init_default_scope('mmdet')
    runner = fake_runner(tmp_path, tiny_model_cfg(quant=dict(QUANT, method='igq')))
    monkeypatch.setattr(hook_module, 'build_calibration_source', no_source)
    monkeypatch.setattr(hook_module, 'draw_calibration_batches',
                        lambda *a: tiny_batches(runner.model, count=1))
    hook = IGQCalibrationHook(sensitivity='fisher', fisher_samples=2, save_state=False)
    hook.before_run(runner)
    hook.before_test(runner)
    report = hook.report
    assert report.sensitivity == 'fisher'
    assert set(report.allocation) == set(igq_quantizers(runner.model))
    assert report.unmeasured and all(n.startswith(('rpn_head', 'roi_head', 'neck'))
                                     for n in report.unmeasured)
    assert all(p.grad is None for p in runner.model.parameters())


@pytest.mark.parametrize('kwargs,match', [
    (dict(sensitivity='kl'), r"IGQCalibrationHook: sensitivity='kl'.*\('exact', 'fisher', 'fisher-full'\)"),
    (dict(sensitivity='fisher', fisher_samples=0), 'IGQCalibrationHook: fisher_samples=0'),
])
def test_hook_refuses_bad_sensitivity_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IGQCalibrationHook(**kwargs)


def test_calibrate_mm_model_refuses_bad_sensitivity_before_any_forward():
    init_default_scope('mmdet')
    model = MODELS.build(tiny_model_cfg(quant=dict(QUANT, method='igq'))).eval()
    quantize_mm_model(model)
    with pytest.raises(ValueError, match="sensitivity='Fisher'"):
        calibrate_mm_model(model, [None], progress=None, sensitivity='Fisher')

"""The fidelity figure: quantized outputs against the model's own float outputs."""
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from igq_demo.fidelity import output_fidelity
from igq_plugin.mm import calibrate_mm_model, quantize_mm_model
from tests.mm.tiny_models import tiny_batches, tiny_model_cfg
from tests.mm.tiny_segmentors import tiny_seg_batches, tiny_segmentor_cfg


def calibrated(cfg, batches_of, bits):
    torch.manual_seed(0)
    model = MODELS.build(cfg(quant=dict(method='igq-fixed', w_bits=bits, a_bits=bits, groups=4)))
    model.eval()
    quantize_mm_model(model)
    calibrate_mm_model(model, batches_of(model, count=1), progress=None)
    return model


@pytest.mark.parametrize('scope, cfg, batches_of', [
    ('mmdet', tiny_model_cfg, tiny_batches), ('mmseg', tiny_segmentor_cfg, tiny_seg_batches)])
def test_fewer_bits_are_further_from_float(scope, cfg, batches_of):
    init_default_scope(scope)
    figures = {}
    for bits in (4, 8):
        model = calibrated(cfg, batches_of, bits)
        held_out = batches_of(model, count=2, seed=5)
        figures[bits] = output_fidelity(model, held_out)
        assert figures[bits].images == 2
    assert 0 < figures[8].feature_error < figures[4].feature_error
    assert 0 <= figures[8].kl < figures[4].kl


def test_an_uncalibrated_model_or_no_image_is_refused():
    init_default_scope('mmdet')
    model = MODELS.build(tiny_model_cfg(quant=dict(method='per-tensor')))
    quantize_mm_model(model)
    with pytest.raises(ValueError, match='calibrated'):
        output_fidelity(model, tiny_batches(model, count=1))
    with pytest.raises(ValueError, match='at least one image'):
        output_fidelity(model, [])

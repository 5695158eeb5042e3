"""to_integer_model on whole models: per-layer agreement with fake-quant, refusals."""
import copy

import pytest
import torch

from igq_plugin import QuantConfig, calibrate_model, quantize_model
from igq_plugin.integer import IntegerConv2d, IntegerLinear, integer_record, to_integer_model
from igq_plugin.nn import QuantLinear
from igq_plugin.quant import QuantMode

from tests.integer import RELATIVE_TOLERANCE, capture_layers, replay_errors
from tests.toy_models import TinyViT, toy_images


def calibrated_vit(method='igq-fixed', **kwargs):
    model = TinyViT().eval()
    quantize_model(model, QuantConfig(method=method, groups=4, candidates=(1, 4), **kwargs))
    calibrate_model(model, list(toy_images(2).split(1)), lambda m, b: m(b))
    return model


@pytest.mark.parametrize('method, options', [
    ('igq-fixed', {}), ('igq-fixed', dict(assignment='nearest')), ('per-tensor', {}),
    ('static-group', {})])
def test_every_layer_agrees_with_fake_quant(method, options):
    model = calibrated_vit(method, **options)
    images = toy_images(3, seed=1)
    captured = capture_layers(model, lambda: model(images))
    record = to_integer_model(model)
    assert record.counts() == {'IntegerConv2d fp32': 1, 'IntegerLinear fp32': 9}
    assert integer_record(model) is record
    assert not any(type(m) is QuantLinear for m in model.modules())
    errors = replay_errors(model, captured)
    assert len(errors) == 10 and max(errors.values()) <= RELATIVE_TOLERANCE, errors
    with torch.no_grad():  # the converted model runs whole, quantized, through its guard
        assert model(images).shape == (3, 5)


def test_float_model_is_refused():
    with pytest.raises(TypeError, match='float model'):
        to_integer_model(TinyViT())


def test_uncalibrated_model_is_refused_untouched():
    model = TinyViT()
    quantize_model(model, QuantConfig(method='igq-fixed', groups=4, candidates=(1, 4)))
    with pytest.raises(ValueError, match='calibrated'):
        to_integer_model(model)
    assert not any(isinstance(m, (IntegerLinear, IntegerConv2d)) for m in model.modules())


def test_quantizer_out_of_quantized_mode_is_refused():
    model = calibrated_vit()
    model.blocks[1].fc2.input_quantizer.mode = QuantMode.FLOAT
    with pytest.raises(ValueError, match='not in quantized mode'):
        to_integer_model(model)


def test_unsupported_method_is_refused_before_any_conversion():
    model = calibrated_vit('upper-bound')
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match='UpperBoundQuantizer'):
        to_integer_model(model)
    assert not any(isinstance(m, (IntegerLinear, IntegerConv2d)) for m in model.modules())
    assert model.state_dict().keys() == before.keys()


def test_second_conversion_is_refused():
    model = calibrated_vit()
    to_integer_model(model)
    with pytest.raises(ValueError, match='already converted'):
        to_integer_model(model)

import copy

import pytest
import torch
from torch import nn

from igq_plugin.nn import (QuantConfig, QuantLinear, QuantSoftmax, activation_quantizers,
                           finalize_calibration, float_layer_count, igq_quantizers,
                           quantize_modules, quantized_layer_count)
from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.quantizers import METHODS
from igq_plugin.search import allocate_groups, sensitivity_tables, total_bops

from tests.toy_models import TinyViT, toy_images


def converted(method='igq', w_bits=4, a_bits=4, groups=4, images=None, bounds='mean'):
    model = TinyViT().eval()
    float_model = copy.deepcopy(model)
    quantize_modules(model, QuantConfig(method, w_bits, a_bits, groups, bounds=bounds),
                     first_layers=['patch_embed'])
    if images is not None:
        with torch.no_grad(), quant_mode(model, 'calibrate'):
            for image in images.split(1):
                model(image)
        finalize_calibration(model)
    return float_model, model


def test_every_layer_wrapped_and_names_kept():
    float_model, model = converted()
    assert float_layer_count(model) == {}
    assert quantized_layer_count(model) == {'QuantConv2d': 1, 'QuantLinear': 9, 'QuantSoftmax': 2}
    float_keys = set(float_model.state_dict())
    result = model.load_state_dict(float_model.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all('quantizer' in key for key in result.missing_keys)
    assert float_keys <= set(model.state_dict())


@pytest.mark.parametrize('method', METHODS)
def test_float_mode_is_bit_identical(method):
    images = toy_images(3)
    float_model, model = converted(method, images=images)
    with torch.no_grad():
        assert torch.equal(model(images), float_model(images))


def test_quantized_mode_changes_every_quantizer_input():
    images = toy_images(2)
    _, model = converted(images=images)
    seen = {}
    hooks = [q.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(
        name, not torch.equal(i[0], o))) for name, q in activation_quantizers(model).items()]
    with torch.no_grad(), quant_mode(model, 'quantized'):
        model(images)
    for hook in hooks:
        hook.remove()
    assert seen and all(seen.values()), [n for n, changed in seen.items() if not changed]


@pytest.mark.parametrize('method', ['per-tensor', 'static-group', 'upper-bound', 'envelope'])
def test_w8a8_stays_close_to_float_and_w4a4_further(method):
    images = toy_images(4)
    bounds = 'envelope' if method == 'envelope' else 'mean'
    method = 'igq' if method == 'envelope' else method
    float_model, model8 = converted(method, 8, 8, images=images, bounds=bounds)
    _, model4 = converted(method, 4, 4, images=images, bounds=bounds)
    with torch.no_grad():
        ref = float_model(images)
        with quant_mode(model8, 'quantized'):
            err8 = (model8(images) - ref).abs().max() / ref.abs().max()
        with quant_mode(model4, 'quantized'):
            err4 = (model4(images) - ref).abs().max() / ref.abs().max()
    assert err8 < 0.05
    assert err4 > err8


def test_quantizers_record_costs_and_attention_operands():
    _, model = converted(images=toy_images(1))
    names = list(igq_quantizers(model))
    assert 'blocks.0.attn.qkv.output_quantizer.q' in names
    assert 'blocks.0.attn.softmax.quantizer' in names
    assert total_bops(activation_quantizers(model)) > 0
    assert isinstance(model.blocks[0].attn.softmax, QuantSoftmax)
    assert model.blocks[0].attn.softmax.value_dim == 16


def test_sensitivity_and_allocation_meet_the_budget():
    images = toy_images(2)
    _, model = converted(groups=4, images=images)
    layers = igq_quantizers(model)

    class Predictor:
        def predict(self, layer):
            return [torch.softmax(model(images[i:i + 1]), -1) for i in range(len(images))]

    tables = sensitivity_tables(model, layers, Predictor())
    assert set(tables) == set(layers)
    assert all(value >= 0 for table in tables.values() for value in table.values())
    assert all(q.mode is QuantMode.FLOAT for q in layers.values())
    result = allocate_groups(layers, tables, g_avg=4)
    assert result.total_bops <= result.budget
    assert {int(q.groups) for q in layers.values()} == set(result.groups.values())
    with pytest.raises(ValueError, match='budget'):
        allocate_groups(layers, tables, g_avg=4, budget=1)


def test_layers_the_predictions_ignore_keep_g_avg():
    """A layer with the same Omega at every G (not upstream of the predictions) is not
    starved to G = 1 by the solver; the others share the rest of the budget."""
    images = toy_images(2)
    _, model = converted(groups=4, images=images)
    layers = igq_quantizers(model)
    names = list(layers)
    blind = names[0]
    tables = {name: {g: (1e-8 if name == blind else 1.0 / g) for g in q.candidates}
              for name, q in layers.items()}
    result = allocate_groups(layers, tables, g_avg=4)
    assert result.unmeasured == (blind,)
    assert result.groups[blind] == min(4, layers[blind].channels or 4)
    assert result.total_bops <= result.budget
    seen = dict(tables)
    seen[blind] = {g: 1e-9 / g for g in layers[blind].candidates}  # tiny, but measured
    assert allocate_groups(layers, seen, g_avg=4).groups[blind] == min(layers[blind].candidates)


def test_quant_config_rejects_bad_values():
    with pytest.raises(ValueError, match='w_bits=1'):
        QuantConfig(w_bits=1)
    with pytest.raises(ValueError, match="method='fp8'"):
        QuantConfig(method='fp8')
    with pytest.raises(ValueError, match='groups=0'):
        QuantConfig(groups=0)
    with pytest.raises(ValueError, match='candidates'):
        QuantConfig(candidates=(0, 2))


def test_quant_linear_from_float_shares_parameters():
    linear = nn.Linear(4, 3)
    layer = QuantLinear.from_float(linear, w_bits=4)
    assert layer.weight is linear.weight and layer.bias is linear.bias

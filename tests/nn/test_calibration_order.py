"""``calibration_order='quantized'``: a second pass on quantized upstream activations."""
import copy

import pytest
import torch
from torch import nn

from igq_plugin import (ClassifierPredictor, QuantConfig, calibrate_model, float_run,
                        quantize_model)
from igq_plugin.quantizers import ALLOCATING_METHODS, METHODS

from .test_reparam import Net, forward, inputs


def batches():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(2, 24, 6, generator=generator) for _ in range(2)]


def calibrate(model, method, order):
    quantize_model(model, QuantConfig(method=method, w_bits=4, a_bits=4, groups=4,
                                      calibration_order=order))
    predictor = ClassifierPredictor(model, batches(), forward) \
        if method in ALLOCATING_METHODS else None
    calibrate_model(model, batches(), forward, predictor=predictor)
    return model


def test_the_second_pass_observes_the_quantized_upstream_activations():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    once = calibrate(copy.deepcopy(mlp), 'per-tensor', 'float')
    seen = []
    handle = once[2].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        for batch in batches():
            once(batch)  # quantized with the first pass's parameters
    handle.remove()
    upstream = torch.cat(seen)
    twice = calibrate(copy.deepcopy(mlp), 'per-tensor', 'quantized')
    quantizer = twice[2].input_quantizer
    torch.testing.assert_close(quantizer.lower, upstream.min().clamp(max=0))
    torch.testing.assert_close(quantizer.upper, upstream.max())
    # the first layer's input is the image: the same in both orders
    torch.testing.assert_close(twice[0].input_quantizer.upper, once[0].input_quantizer.upper)


@pytest.mark.parametrize('method', METHODS)
def test_every_method_calibrates_in_the_quantized_order(method):
    reference = Net()
    model = calibrate(Net(), method, 'quantized')
    x = inputs()
    with float_run(model), torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        quantized = model(x)
        float_order = calibrate(Net(), method, 'float')(x)
    assert torch.isfinite(quantized).all()
    assert quantized.shape == float_order.shape


def test_a_folding_quantizer_keeps_statistics_of_the_unfolded_input():
    """The second pass of ``repq`` sees the folded LayerNorm output; its per-channel
    ranges are mapped back, so the fold stays close to the float-order fold (it would
    be the identity fold, ratio 1, if the folded input were taken at face value)."""
    float_order = calibrate(Net(), 'repq', 'float').blocks[0].mlp.fc1.input_quantizer
    quantized = calibrate(Net(), 'repq', 'quantized').blocks[0].mlp.fc1.input_quantizer
    ratio_float, _ = float_order.fold_factors()
    ratio_quantized, _ = quantized.fold_factors()
    assert ratio_float.max() / ratio_float.min() > 3
    torch.testing.assert_close(ratio_quantized, ratio_float, rtol=0.25, atol=0.0)


def test_a_bad_order_is_refused_by_name():
    with pytest.raises(ValueError, match="calibration_order='sequential' is not supported"):
        QuantConfig(calibration_order='sequential')

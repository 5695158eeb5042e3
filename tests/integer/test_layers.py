"""IntegerLinear / IntegerConv2d against the fake-quant layers and a float64 reference."""
import pytest
import torch
import torch.nn.functional as F

from igq_plugin.integer import (IntegerConv2d, IntegerLinear, activation_codes,
                                dequantize_codes, exact_backend, onednn_available)
from igq_plugin.nn import QuantConv2d, QuantLinear
from igq_plugin.quant import quant_mode
from igq_plugin.quantizers import IGQQuantizer, PerTensorQuantizer, UpperBoundQuantizer

from tests.conftest import vit_like_activations
from tests.integer import RELATIVE_TOLERANCE, relative_error
from tests.quantizer_helpers import calibrate

EPS32 = 2.0 ** -24  # unit roundoff of float32


def input_quantizer(method, channels, channel_dim, bits=4):
    if method == 'per-tensor':
        return PerTensorQuantizer(bits, channels, channel_dim=channel_dim)
    return IGQQuantizer(bits, channels, channel_dim=channel_dim, groups=8, candidates=(1, 8),
                        assignment=method.split('-')[1])


def calibrated_linear(method='igq-cover', channels=96, out=64, w_bits=4, a_bits=4, seed=0):
    torch.manual_seed(seed)
    layer = QuantLinear(channels, out, w_bits=w_bits,
                        input_quantizer=input_quantizer(method, channels, -1, a_bits))
    calibrate(layer.input_quantizer, vit_like_activations(4, 49, channels, seed=seed))
    layer.finalize_calibration()
    return layer


def calibrated_conv(method='igq-cover', channels=32, out=16, kernel=3, seed=0):
    torch.manual_seed(seed)
    layer = QuantConv2d(channels, out, kernel, padding=kernel // 2, w_bits=4,
                        input_quantizer=input_quantizer(method, channels, 1))
    images = vit_like_activations(3, 64, channels, seed=seed).transpose(1, 2).reshape(3, -1, 8, 8)
    calibrate(layer.input_quantizer, images)
    layer.finalize_calibration()
    return layer


def conv_inputs(channels, seed=1):
    return vit_like_activations(2, 64, channels, seed=seed).transpose(1, 2).reshape(2, -1, 8, 8)


def float64_reference(layer, x, conv=False):
    """The same codes dequantized and multiplied in float64, and the sum of the
    magnitudes of the terms (what a float error is relative to)."""
    with quant_mode(layer, 'quantized'):
        x_hat = dequantize_codes(activation_codes(layer.input_quantizer, x),
                                 layer.input_quantizer.num_instances).double()
        w_hat = layer.weight_quantizer(layer.weight).double()
    bias = layer.bias.double()
    if conv:
        run = lambda a, w, b: F.conv2d(a, w, b, layer.stride, layer.padding)  # noqa: E731
    else:
        run = F.linear
    return run(x_hat, w_hat, bias), run(x_hat.abs(), w_hat.abs(), bias.abs())


LINEAR_METHODS = ['igq-cover', 'igq-nearest', 'per-tensor']


@pytest.mark.parametrize('backend', ['fp32', 'fp64'])
@pytest.mark.parametrize('method', LINEAR_METHODS)
def test_integer_linear_matches_fake_quant_and_float64(method, backend):
    layer = calibrated_linear(method)
    layer.input_quantizer.num_instances = 2
    x = vit_like_activations(2, 98, 96, seed=1).reshape(4, 49, 96)  # 2 windows per image
    integer = IntegerLinear.from_quantized(layer, backend)
    with torch.no_grad(), quant_mode(layer, 'quantized'):
        fake, out = layer(x), integer(x)
    assert out.dtype == torch.float32 and out.shape == fake.shape
    assert relative_error(out, fake) <= RELATIVE_TOLERANCE
    reference, magnitude = float64_reference(layer, x)
    groups = 8 if method != 'per-tensor' else 1
    # G rescale-and-adds, the s_w product and the bias add, each one float32 rounding
    assert ((out.double() - reference).abs() <= (2 * groups + 3) * EPS32 * magnitude).all()


CONV_BACKENDS = ['fp32', 'fp64'] + (['onednn'] if onednn_available() else [])


@pytest.mark.parametrize('kernel', [1, 3])
@pytest.mark.parametrize('backend', CONV_BACKENDS)
@pytest.mark.parametrize('method', ['igq-cover', 'per-tensor'])
def test_integer_conv_matches_fake_quant_and_float64(method, backend, kernel):
    layer = calibrated_conv(method, kernel=kernel)
    x = conv_inputs(32)
    integer = IntegerConv2d.from_quantized(layer, backend)
    with torch.no_grad(), quant_mode(layer, 'quantized'):
        fake, out = layer(x), integer(x)
    assert out.is_contiguous() and out.shape == fake.shape
    assert relative_error(out, fake) <= RELATIVE_TOLERANCE
    reference, magnitude = float64_reference(layer, x, conv=True)
    groups = 8 if method != 'per-tensor' else 1
    assert ((out.double() - reference).abs() <= (2 * groups + 3) * EPS32 * magnitude).all()


def test_layer_holds_codes_not_the_float_weight():
    integer = IntegerLinear.from_quantized(calibrated_linear())
    state = integer.state_dict()
    assert 'weight' not in state and state['weight_codes'].dtype == torch.uint8
    assert not any(p.requires_grad for p in integer.parameters())
    assert 'backend=fp32' in repr(integer)


def test_integer_layer_refuses_a_float_run():
    layer = calibrated_linear()
    integer = IntegerLinear.from_quantized(layer)
    with pytest.raises(RuntimeError, match='no float weight'):
        integer(torch.randn(1, 49, 96))


def test_backend_is_exact_or_refused():
    # 4-bit codes: partial sums stay far below 2^24, float32 is exact
    assert exact_backend(torch.full((8, 3072), 15.0), 4, conv=False) == 'fp32'
    # 8-bit activations and weights over 768 channels can reach 768 * 255^2 > 2^24
    wide = torch.full((8, 768), 255.0)
    assert exact_backend(wide, 8, conv=False) == 'fp64'
    with pytest.raises(ValueError, match="backend='fp32' is not exact"):
        exact_backend(wide, 8, conv=False, requested='fp32')
    with pytest.raises(ValueError, match='allowed are'):
        exact_backend(wide, 8, conv=False, requested='int8')
    # oneDNN on AVX2 saturates u8*s8 pair sums in int16: refused for 8-bit weights
    assert exact_backend(torch.full((8, 9), 100.0), 8, conv=True) != 'onednn'


def test_eight_bit_layer_falls_back_to_float64_and_stays_exact():
    layer = calibrated_linear(channels=3072, out=8, w_bits=8, a_bits=8)
    integer = IntegerLinear.from_quantized(layer)
    x = vit_like_activations(1, 49, 3072, seed=2)
    with torch.no_grad(), quant_mode(layer, 'quantized'):
        out, fake = integer(x), layer(x)
    reference, _ = float64_reference(layer, x)
    assert integer.backend == 'fp64'
    assert relative_error(out, fake) <= RELATIVE_TOLERANCE
    assert relative_error(out, reference) <= 2 * EPS32


def test_unsupported_input_quantizer_is_refused_by_name():
    layer = QuantLinear(24, 8, input_quantizer=UpperBoundQuantizer(4, 24))
    calibrate(layer.input_quantizer, vit_like_activations(1, 16, 24))
    layer.finalize_calibration()
    with pytest.raises(TypeError, match='UpperBoundQuantizer'):
        IntegerLinear.from_quantized(layer)

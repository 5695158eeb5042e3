"""Integer codes and groups of every supported quantizer equal the fake-quant ones."""
import pytest
import torch

from igq_plugin.integer import activation_codes, dequantize_codes, weight_codes
from igq_plugin.quantizers import (FixedRangeQuantizer, IGQQuantizer, PerTensorQuantizer,
                                   RepQQuantizer, StaticGroupQuantizer, UpperBoundQuantizer,
                                   WeightQuantizer)
from igq_plugin.quant import quant_mode

from tests.conftest import vit_like_activations
from tests.quantizer_helpers import activations, calibrate, quantized


def channels_first(x):  # [I, T, C] -> [I, C, 4, T / 4]
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], 4, -1)


def build(kind, channel_dim, channels=24):
    if kind == 'per-tensor':
        return PerTensorQuantizer(4, channels, channel_dim=channel_dim)
    if kind == 'static-group':
        return StaticGroupQuantizer(4, channels, channel_dim=channel_dim, groups=4)
    assignment, groups = kind.split('-')[1:]
    return IGQQuantizer(4, channels, channel_dim=channel_dim, groups=int(groups),
                        candidates=(1, 4, 8), assignment=assignment)


KINDS = ['per-tensor', 'static-group', 'igq-cover-1', 'igq-cover-4', 'igq-cover-8',
         'igq-nearest-1', 'igq-nearest-8']


@pytest.mark.parametrize('channel_dim', [-1, 1])
@pytest.mark.parametrize('kind', KINDS)
def test_codes_dequantize_to_the_fake_quant_output(kind, channel_dim):
    calib = vit_like_activations(4, 64, 24, seed=0)
    test = vit_like_activations(3, 64, 24, seed=1) * 1.5  # some channels beyond every group
    if channel_dim == 1:
        calib, test = channels_first(calib), channels_first(test)
    quantizer = calibrate(build(kind, channel_dim), calib)
    with quant_mode(quantizer, 'quantized'):
        codes = activation_codes(quantizer, test)
    assert codes.codes.dtype == torch.uint8 and codes.codes.shape == test.shape
    assert int(codes.codes.max()) <= 15
    assert torch.equal(dequantize_codes(codes), quantized(quantizer, test))
    if isinstance(quantizer, IGQQuantizer):  # the quantizer's own assignment
        assert torch.equal(codes.group, quantizer.assign(test))
        assert codes.scale.numel() == int(quantizer.groups)


def test_windows_of_one_image_share_its_groups():
    quantizer = calibrate(build('igq-cover-4', -1), vit_like_activations(4, 64, 24))
    quantizer.num_instances = 2
    test = vit_like_activations(2, 64, 24, seed=3).reshape(8, 16, 24)  # 4 windows per image
    codes = activation_codes(quantizer, test)
    assert codes.group.shape == (2, 24)
    assert torch.equal(dequantize_codes(codes, 2), quantized(quantizer, test))


def test_fixed_range_gives_every_channel_its_group():
    quantizer = FixedRangeQuantizer(8, 3)
    quantizer.set_range(torch.tensor([-2.0, -1.0, -3.0]), torch.tensor([2.0, 3.0, 1.0]))
    quantizer = calibrate(quantizer, torch.zeros(1, 3, 4, 4))
    images = activations(2, 3, 8, 8, seed=1, channel_dim=1)
    codes = activation_codes(quantizer, images)
    assert torch.equal(codes.group, torch.arange(3)[None]) and codes.scale.numel() == 3
    assert torch.equal(dequantize_codes(codes), quantized(quantizer, images))


@pytest.mark.parametrize('cls', [UpperBoundQuantizer, RepQQuantizer])
def test_quantizers_without_integer_form_are_refused_by_name(cls):
    quantizer = calibrate(cls(4, 24), vit_like_activations(2, 64, 24))
    with pytest.raises(TypeError, match=cls.__name__):
        activation_codes(quantizer, vit_like_activations(1, 64, 24))


def test_uncalibrated_quantizer_is_refused():
    with pytest.raises(ValueError, match='not calibrated'):
        activation_codes(build('igq-cover-4', -1), vit_like_activations(1, 64, 24))


@pytest.mark.parametrize('bits', [4, 8])
def test_weight_codes_dequantize_to_the_fake_quant_weight(bits):
    weight = torch.randn(16, 24, 3, 3)
    quantizer = WeightQuantizer(bits, 16)
    quantizer.fit(weight)
    codes = weight_codes(weight, quantizer.scale, quantizer.zero_point, bits)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2 ** bits - 1
    shape = (-1, 1, 1, 1)
    dequantized = (codes.float() - quantizer.zero_point.view(shape)) * quantizer.scale.view(shape)
    with quant_mode(quantizer, 'quantized'):
        assert torch.equal(dequantized, quantizer(weight))

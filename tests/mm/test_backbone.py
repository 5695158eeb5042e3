
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

import igq_plugin.mm  # noqa: F401  (registers IGQBackbone)
from igq_plugin.mm import QuantState
from igq_plugin.nn import activation_quantizers, float_layer_count, quantized_layer_count
from igq_plugin.quant import quant_mode

from .tiny_models import TINY_BACKBONE

QUANT = dict(method='igq', w_bits=4, a_bits=4, groups=4)


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def build(quant=QUANT, wrapped_type='SwinTransformer', seed=0):
    torch.manual_seed(seed)
    cfg = dict(type='IGQBackbone', wrapped_type=wrapped_type, quant=quant, **TINY_BACKBONE)
    backbone = MODELS.build(cfg)
    backbone.eval()  # mmdet's SwinTransformer.train() returns None: no chaining
    return backbone


def build_float(seed=0):
    torch.manual_seed(seed)
    backbone = MODELS.build(dict(type='SwinTransformer', **TINY_BACKBONE))
    backbone.eval()
    return backbone


def test_every_linear_softmax_and_patch_embed_is_quantized():
    backbone = build()
    assert float_layer_count(backbone) == {}
    counts = quantized_layer_count(backbone)
    # 5 blocks x (qkv, proj, fc1, fc2) + 3 patch-merging reductions; 5 softmax; patch embed
    assert counts == {'QuantLinear': 23, 'QuantSoftmax': 5, 'QuantConv2d': 1}
    assert backbone.patch_embed.projection.weight_quantizer.bits == 8
    assert backbone.patch_embed.projection.input_quantizer.bits == 8
    assert backbone.stages[0].blocks[0].attn.w_msa.qkv.output_quantizer.q.bits == 4


def test_float_mode_bit_identical_and_checkpoint_names_kept():
    backbone, reference = build(), build_float()
    result = backbone.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('quantizer' in k for k in result.missing_keys)
    image = torch.randn(2, 3, 64, 64)
    backbone.igq_state = QuantState.CALIBRATING  # float runs allowed during calibration
    with torch.no_grad():
        for ours, theirs in zip(backbone(image), reference(image)):
            assert torch.equal(ours, theirs)


def test_uncalibrated_backbone_refuses_to_run():
    with pytest.raises(RuntimeError, match='not calibrated'):
        build()(torch.randn(1, 3, 64, 64))


def test_windows_of_one_image_are_one_instance():
    backbone = build()
    backbone.igq_state = QuantState.CALIBRATING
    with torch.no_grad(), quant_mode(backbone, 'calibrate'):
        backbone(torch.randn(2, 3, 64, 64))
    q = backbone.stages[0].blocks[0].attn.w_msa.qkv.input_quantizer
    assert q.num_instances == 2 and q.last_input_shape[0] > 2  # windows x images


def test_mmseg_swin_is_supported():
    cfg = dict(type='IGQBackbone', wrapped_type='mmseg.SwinTransformer', quant=QUANT,
               embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4,
               strides=(4, 2, 2, 2), init_cfg=None)
    backbone = MODELS.build(cfg)
    assert type(backbone).__module__ == 'mmseg.models.backbones.swin'
    assert float_layer_count(backbone) == {}
    assert len(activation_quantizers(backbone)) > 0


class TestBadInput:
    def test_unsupported_backbone(self):
        with pytest.raises(ValueError, match="wrapped_type='ResNet'.*SwinTransformer"):
            build(wrapped_type='ResNet')

    def test_bits_out_of_range(self):
        with pytest.raises(ValueError, match=r'a_bits=1.*2\.\.16'):
            build(quant=dict(QUANT, a_bits=1))

    def test_unknown_quant_key(self):
        with pytest.raises(ValueError, match=r"unknown keys \['bitz'\]"):
            build(quant=dict(QUANT, bitz=4))

    def test_unknown_method(self):
        with pytest.raises(ValueError, match="method='minmax'"):
            build(quant=dict(QUANT, method='minmax'))

"""IGQBackbone and the one conversion path of mm models (Swin, and mmseg's ViT)."""
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

import igq_plugin.mm  # noqa: F401  (registers IGQBackbone)
from igq_plugin import float_run
from igq_plugin.mm import MMQuantSettings, calibrate_mm_model, mm_settings, quantize_mm_model
from igq_plugin.nn import (QuantSoftmax, activation_quantizers, float_layer_count,
                           quantized_layer_count, set_quant_state, QuantState)
from igq_plugin.quant import quant_mode
from igq_plugin.quantizers import FixedRangeQuantizer

from .tiny_models import TINY_BACKBONE, tiny_batches, tiny_model_cfg

QUANT = dict(method='igq', w_bits=4, a_bits=4, groups=4)


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def build_detector(quant=QUANT, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(tiny_model_cfg(quant=quant))
    model.eval()
    return model


def test_backbone_is_float_until_the_model_is_converted():
    model = build_detector()
    assert isinstance(mm_settings(model), MMQuantSettings)
    assert float_layer_count(model.backbone)  # nothing converted at build time
    with pytest.raises(RuntimeError, match='never quantized.*IGQCalibrationHook'):
        model.backbone(torch.randn(1, 3, 64, 64))


def test_one_conversion_covers_backbone_and_neck():
    model = build_detector()
    record = quantize_mm_model(model)
    assert quantize_mm_model(model) is record  # idempotent
    assert float_layer_count(model.backbone) == {} and float_layer_count(model.neck) == {}
    # 5 blocks x (qkv, proj, fc1, fc2) + 3 patch-merging reductions; 5 softmax; patch embed
    assert quantized_layer_count(model.backbone) == {'QuantLinear': 23, 'QuantSoftmax': 5,
                                                     'QuantConv2d': 1}
    assert quantized_layer_count(model.roi_head) == {}  # roi_head=False by default
    embed = model.backbone.patch_embed.projection
    assert embed.weight_quantizer.bits == 8 and isinstance(embed.input_quantizer,
                                                           FixedRangeQuantizer)
    assert model.backbone.stages[0].blocks[0].attn.w_msa.qkv.output_quantizer.q.bits == 4


def test_float_mode_bit_identical_and_checkpoint_names_kept():
    model, reference = build_detector(), build_detector(quant=None)
    quantize_mm_model(model)
    result = model.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all('quantizer' in k for k in result.missing_keys)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), float_run(model):
        for ours, theirs in zip(model.extract_feat(image), reference.extract_feat(image)):
            assert torch.equal(ours, theirs)


def test_uncalibrated_model_refuses_to_run():
    model = build_detector()
    quantize_mm_model(model)
    with pytest.raises(RuntimeError, match='not calibrated'):
        model.extract_feat(torch.randn(1, 3, 64, 64))


def test_windows_of_one_image_are_one_instance():
    model = build_detector()
    quantize_mm_model(model)
    set_quant_state(model, QuantState.CALIBRATING)
    with torch.no_grad(), quant_mode(model, 'calibrate'):
        model.backbone(torch.randn(2, 3, 64, 64))
    q = model.backbone.stages[0].blocks[0].attn.w_msa.qkv.input_quantizer
    assert q.num_instances == 2 and q.last_input_shape[0] > 2  # windows x images


def test_mmseg_swin_is_supported():
    cfg = dict(type='IGQBackbone', wrapped_type='mmseg.SwinTransformer', quant=QUANT,
               embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4,
               strides=(4, 2, 2, 2), init_cfg=None)
    backbone = MODELS.build(cfg)
    assert type(backbone).__module__ == 'mmseg.models.backbones.swin'


def tiny_vit_detector(quant):
    """The tiny detector with mmseg's VisionTransformer as its backbone."""
    cfg = tiny_model_cfg()
    vit = dict(type='mmseg.VisionTransformer') if quant is None else dict(
        type='IGQBackbone', wrapped_type='mmseg.VisionTransformer', quant=quant)
    cfg.backbone = dict(vit, img_size=(64, 64), patch_size=8, embed_dims=32, num_layers=2,
                        num_heads=2, mlp_ratio=2, out_indices=(0, 1), final_norm=False,
                        init_cfg=None)
    cfg.neck.update(in_channels=[32, 32], num_outs=2)
    cfg.rpn_head.anchor_generator.strides = [8, 16]
    cfg.roi_head.bbox_roi_extractor.featmap_strides = [8, 16]
    cfg.roi_head.mask_roi_extractor.featmap_strides = [8, 16]
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.eval()
    return model


def test_mmseg_vit_backbone_builds_calibrates_and_runs_quantized():
    model = tiny_vit_detector(dict(QUANT, candidates=(1, 2, 4)))
    reference = tiny_vit_detector(None)
    quantize_mm_model(model)
    assert float_layer_count(model.backbone) == {}
    assert sum(isinstance(m, QuantSoftmax) for m in model.backbone.modules()) == 2
    names = set(activation_quantizers(model.backbone))
    assert 'layers.0.attn.attn.qkv_quantizer.k' in names
    assert 'layers.0.attn.attn.in_proj_input_quantizer' in names
    batches = tiny_batches(model, count=1)
    with torch.no_grad(), float_run(model):
        for ours, theirs in zip(model.extract_feat(batches[0]['inputs']),
                                reference.extract_feat(batches[0]['inputs'])):
            assert torch.equal(ours, theirs)
    report = calibrate_mm_model(model, batches, progress=None)
    assert report.allocation
    rows = {r['layer']: r['sensitivity'] for r in report.rows}
    assert rows['backbone.layers.0.attn.attn.qkv_quantizer.v'] > 0
    with torch.no_grad():
        quantized = model.extract_feat(batches[0]['inputs'])
        floats = reference.extract_feat(batches[0]['inputs'])
    assert not torch.equal(quantized[0], floats[0])


class TestBadInput:
    def build(self, quant=QUANT, wrapped_type='SwinTransformer'):
        cfg = dict(type='IGQBackbone', wrapped_type=wrapped_type, quant=quant, **TINY_BACKBONE)
        return MODELS.build(cfg)

    def test_unsupported_backbone(self):
        with pytest.raises(ValueError, match="wrapped_type='ResNet'.*SwinTransformer.*"
                                             "VisionTransformer"):
            self.build(wrapped_type='ResNet')

    def test_bits_out_of_range(self):
        with pytest.raises(ValueError, match=r'a_bits=1.*2\.\.16'):
            self.build(quant=dict(QUANT, a_bits=1))

    def test_unknown_quant_key(self):
        with pytest.raises(ValueError, match=r"unknown keys \['bitz'\]"):
            self.build(quant=dict(QUANT, bitz=4))

    def test_part_switch_must_be_bool(self):
        with pytest.raises(ValueError, match=r"quant.neck='yes'"):
            self.build(quant=dict(QUANT, neck='yes'))

    def test_unknown_method(self):
        with pytest.raises(ValueError, match="method='minmax'"):
            self.build(quant=dict(QUANT, method='minmax'))

"""Tiny UperNet segmentors built from mmseg's own configs, for fast CPU tests."""
import copy

import torch
from mmengine.hub import get_config

SWIN_UPERNET = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
VIT_UPERNET = 'mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py'
NUM_CLASSES = 4
SIZE = 64


def tiny_segmentor_cfg(config=SWIN_UPERNET, quant=None):
    """mmseg's UperNet Swin-T (or DeiT-S) config shrunk; quantized when ``quant`` given."""
    model = copy.deepcopy(get_config(config).model)
    model.pretrained = None
    model.data_preprocessor.size = (SIZE, SIZE)
    bn = dict(type='BN', requires_grad=True)  # CPU, one process
    if config == SWIN_UPERNET:
        model.backbone.update(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                              window_size=4, drop_path_rate=0.0, init_cfg=None)
        wrapped, widths = 'mmseg.SwinTransformer', [16, 32, 64, 128]
        model.auxiliary_head.update(in_channels=64, channels=16)
    else:
        model.backbone.update(img_size=(SIZE, SIZE), patch_size=8, embed_dims=32, num_layers=4,
                              num_heads=2, mlp_ratio=2, out_indices=(0, 1, 2, 3),
                              drop_path_rate=0.0, init_cfg=None)
        wrapped, widths = 'mmseg.VisionTransformer', [32, 32, 32, 32]
        model.auxiliary_head.update(in_channels=32, channels=16)
    model.decode_head.update(in_channels=widths, channels=32, num_classes=NUM_CLASSES,
                             norm_cfg=bn)
    model.auxiliary_head.update(num_classes=NUM_CLASSES, norm_cfg=bn)
    if quant is not None:
        model.backbone.update(type='IGQBackbone', wrapped_type=wrapped, quant=quant)
    return model


def tiny_seg_batches(model, count=2, seed=0):
    """Preprocessed single-image batches of synthetic images with varying contrast."""
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        gain = torch.exp(torch.randn(3, 1, 1, generator=gen) * 0.5)
        image = (torch.rand(3, SIZE, SIZE, generator=gen) * 255 * gain).clamp(0, 255)
        sample = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                                             pad_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0)))
        batches.append(model.data_preprocessor(dict(inputs=[image.to(torch.uint8)],
                                                    data_samples=[sample]), False))
    return batches

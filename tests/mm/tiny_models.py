"""Tiny Swin detectors built from mmdet's own configs, for fast CPU tests."""
import copy

import torch
from mmengine.config import Config
from mmengine.hub import get_config

SWIN_CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
CASCADE_CONFIG = 'configs/cascade_rcnn/cascade-mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
TINY_BACKBONE = dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
                     drop_path_rate=0.0, init_cfg=None, convert_weights=False)
TINY_FPN = dict(in_channels=[16, 32, 64, 128], out_channels=32)


def tiny_model_cfg(config=SWIN_CONFIG, quant=None, num_classes=3):
    """mmdet's Swin Mask R-CNN (or Cascade) config shrunk; quantized when ``quant`` given."""
    cfg = get_config(config) if '::' in config else Config.fromfile(config)
    model = copy.deepcopy(cfg.model)
    model.backbone.update(TINY_BACKBONE)
    model.neck.update(TINY_FPN)
    model.rpn_head.update(in_channels=32, feat_channels=32)
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = 32
    roi.mask_roi_extractor.out_channels = 32
    heads = roi.bbox_head if isinstance(roi.bbox_head, list) else [roi.bbox_head]
    for head in heads:
        head.update(in_channels=32, fc_out_channels=64, num_classes=num_classes)
    roi.mask_head.update(in_channels=32, conv_out_channels=32, num_classes=num_classes)
    model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
    if quant is not None:
        model.backbone.update(type='IGQBackbone', wrapped_type='SwinTransformer', quant=quant)
    return model


def tiny_batches(model, count=2, size=64, seed=0):
    """Preprocessed single-image batches of synthetic images with varying contrast."""
    from mmdet.structures import DetDataSample
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        gain = torch.exp(torch.randn(3, 1, 1, generator=gen) * 0.5)
        image = (torch.rand(3, size, size, generator=gen) * 255 * gain).clamp(0, 255)
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                             scale_factor=(1.0, 1.0), pad_shape=(size, size),
                                             batch_input_shape=(size, size)))
        batches.append(model.data_preprocessor(dict(inputs=[image.to(torch.uint8)],
                                                    data_samples=[sample]), False))
    return batches


def fake_runner_fields(model_cfg, **cfg):
    """What a fake runner needs for the hook's default calibration source (train images
    with the evaluation pipeline): the loader configs (never built: the tests replace
    the hook's ``build_calibration_source`` by :func:`no_source` and its
    ``draw_calibration_batches``)."""
    dataset = dict(type='CocoDataset', pipeline=[])
    loaders = {f'{split}_dataloader': dict(dataset=dataset) for split in ('train', 'val', 'test')}
    return dict(cfg=Config(dict(model=model_cfg, **loaders, **cfg)))


def no_source(loader_cfg):
    """Stands in for ``build_calibration_source``: the loader config is well formed."""
    assert 'pipeline' in loader_cfg['dataset']

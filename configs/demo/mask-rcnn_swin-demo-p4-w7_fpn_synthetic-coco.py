# Demo detector: a small Swin Mask R-CNN trained from scratch on the project's
# synthetic COCO-format dataset (tools/make_synthetic_coco.py) on the CPU.
# Same architecture as mmdet's Swin-T Mask R-CNN, with smaller widths and depths so
# that it trains in minutes; the quantized layers are the same kinds as Swin-T's.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
# The plugin, and (opt-in, for load_from / resume of training checkpoints under torch
# 2.14) its weights_only-safe loader of mmengine checkpoints.
custom_imports = dict(imports=['igq_plugin.mm', 'igq_plugin.mm.checkpoint'],
                      allow_failed_imports=False)

data_root = 'data/synthetic_coco/'
# The same generator with 2000 training images (the first 400 and the val split are
# those of data_root), for the later training cycles (_2k.py, the Cascade).
large_data_root = 'data/synthetic_coco_2k/'
classes = ('circle', 'square', 'triangle', 'star', 'ring', 'bar')  # igq_plugin.data.CLASSES
metainfo = dict(classes=classes)
image_size = (192, 192)
embed_dims = 32
fpn_channels = 64

model = dict(
    backbone=dict(
        embed_dims=embed_dims,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],  # head dim 32 in every stage
        window_size=7,
        drop_path_rate=0.0,
        convert_weights=False,
        init_cfg=None),  # trained from scratch: nothing to download
    neck=dict(in_channels=[embed_dims * 2**i for i in range(4)], out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels),
    roi_head=dict(
        # sampling_ratio=2: mmcv's CPU RoIAlign (and its backward) was half of the
        # training time with the adaptive default (0).
        bbox_roi_extractor=dict(out_channels=fpn_channels, roi_layer=dict(sampling_ratio=2)),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=fpn_channels, roi_layer=dict(sampling_ratio=2)),
        mask_head=dict(in_channels=fpn_channels, conv_out_channels=fpn_channels,
                       num_classes=len(classes))),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300), rcnn=dict(max_per_img=50)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# Batch 2: the same CPU time gives twice the updates, which helps a Swin trained
# from scratch more than a larger batch does.
train_dataloader = dict(
    batch_size=2, num_workers=1, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 30
train_cfg = dict(max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5)
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_epochs))
auto_scale_lr = dict(enable=False)
randomness = dict(seed=0, deterministic=False)

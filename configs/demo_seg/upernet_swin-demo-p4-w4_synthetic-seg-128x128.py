# Demo segmentor: a small Swin UperNet trained from scratch on the project's synthetic
# semantic-segmentation shapes (tools/make_synthetic_seg.py) on the CPU, one thread.
# mmseg's Swin-T UperNet with smaller widths / depths / window and a 128x128 input, so
# that it trains in about 45 minutes (15000 iterations of batch 4); the quantized layers
# are the same kinds as Swin-T's.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['igq_demo.seg_dataset'], allow_failed_imports=False)

dataset_type = 'SyntheticShapesDataset'  # igq_demo/seg_dataset.py: background + 6 shapes
# data_root: the demo's 400-image set (test loop: its val split). Training uses a
# 2000-image set of the same generator (its first 400 training images and its val split
# are those of data_root); the validation during training uses held-out images of
# another seed, so that no training choice is made on the val split.
data_root = 'data/synthetic_seg/'
train_data_root = 'data/synthetic_seg_2k/'
holdout_data_root = 'data/synthetic_seg_holdout/'
num_classes = 7
image_size = (128, 128)
crop_size = image_size
embed_dims = 32
head_channels = 32  # UPerHead at 1/4 dominated the step time with 64
norm_cfg = dict(type='BN', requires_grad=True)  # one CPU process: no SyncBN
# 87% of the pixels are background: weight it down, or the first thousands of
# iterations predict background only. (mmseg's weighted mean cannot take ignored (255)
# pixels, so the training pipeline pads nothing.)
class_weight = [0.2] + [1.0] * (num_classes - 1)

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        init_cfg=None,  # trained from scratch: nothing to download
        embed_dims=embed_dims,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 4, 8],  # head dim 32 in every stage
        window_size=4,  # tiles the 32/16/8/4 feature maps of a 128 input without padding
        drop_path_rate=0.0),
    decode_head=dict(
        in_channels=[embed_dims * 2**i for i in range(4)],
        channels=head_channels,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        loss_decode=dict(class_weight=class_weight)),
    auxiliary_head=dict(
        in_channels=embed_dims * 4,
        channels=head_channels,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        loss_decode=dict(class_weight=class_weight)))

# The images are 128x128 already and photometrically varied: flip only (no resize, no
# crop: nothing to pad; PhotoMetricDistortion slowed learning down).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs')
]
# Batch 4: more updates for the same CPU time learned faster than batch 8.
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=train_data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        type=dataset_type,
        data_root=holdout_data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline))
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# From scratch: a larger learning rate than the fine-tuning default (6e-5).
max_iters = 15000
warmup_iters = 200
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.05), clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=warmup_iters,
         end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=2500)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0, deterministic=False)

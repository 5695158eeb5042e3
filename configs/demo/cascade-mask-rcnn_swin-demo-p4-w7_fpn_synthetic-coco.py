# Demo Cascade Mask R-CNN: the demo Swin backbone, FPN, data and schedule of
# mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py, with the three-stage cascade RoI
# head of mmdet's cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py (IoU 0.5/0.6/0.7).
_base_ = './mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py'

stage_ious = (0.5, 0.6, 0.7)
stage_stds = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
model = dict(
    type='CascadeRCNN',
    roi_head=dict(
        _delete_=True,
        type='CascadeRoIHead',
        num_stages=3,
        stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
            out_channels={{_base_.fpn_channels}},
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=[
            dict(
                type='Shared2FCBBoxHead',
                in_channels={{_base_.fpn_channels}},
                fc_out_channels=256,
                roi_feat_size=7,
                num_classes=len({{_base_.classes}}),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                target_stds=stds),
                reg_class_agnostic=True,
                loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
            for stds in stage_stds
        ],
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2),
            out_channels={{_base_.fpn_channels}},
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels={{_base_.fpn_channels}},
            conv_out_channels={{_base_.fpn_channels}},
            num_classes=len({{_base_.classes}}),
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(rcnn=[
        dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou,
                          min_pos_iou=iou, match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1,
                         add_gt_as_proposals=True),
            mask_size=28,
            pos_weight=-1,
            debug=False) for iou in stage_ious
    ]))

# Recipe: start from the trained demo Mask R-CNN (backbone, FPN, RPN and mask head
# load; the three cascade box heads start from scratch) and train 2 epochs on the
# 2000-image training split.
load_from = 'work_dirs/demo_models/mask-rcnn-2k/epoch_8.pth'
cascade_epochs = 2
train_dataloader = dict(dataset=dict(data_root={{_base_.large_data_root}}))
train_cfg = dict(max_epochs=cascade_epochs, val_interval=cascade_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=cascade_epochs, eta_min=1e-5)
]
default_hooks = dict(checkpoint=dict(interval=cascade_epochs))

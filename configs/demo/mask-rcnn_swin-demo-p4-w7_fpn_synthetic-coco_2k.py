# Third cycle of the demo Mask R-CNN's training: the 45-epoch model (base and
# _restart configs) fits its 400 training images far better than the val split
# (bbox mAP 0.68 on train vs 0.36 on val), so this cycle trains on 2000 images of the
# same generator (seed 0; the first 400 are the same images, the val split is
# identical). The exported demo model is the last epoch of this cycle.
_base_ = './mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco_restart.py'

load_from = 'work_dirs/demo_models/mask-rcnn-restart/epoch_15.pth'
more_data_epochs = 8
train_dataloader = dict(dataset=dict(data_root={{_base_.large_data_root}}))
train_cfg = dict(max_epochs=more_data_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=more_data_epochs, eta_min=1e-5)
]
default_hooks = dict(checkpoint=dict(interval=more_data_epochs))

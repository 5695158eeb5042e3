# Second cycle of the demo Mask R-CNN's training (a warm restart of the cosine
# schedule): start from the 30-epoch model of mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py
# and train 15 more epochs at half its peak learning rate. The exported demo model
# is the last epoch of this cycle; the architecture and data are those of the base.
_base_ = './mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py'

load_from = 'work_dirs/demo_models/mask-rcnn/epoch_30.pth'
restart_epochs = 15
train_cfg = dict(max_epochs=restart_epochs, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=restart_epochs, eta_min=1e-5)
]
optim_wrapper = dict(optimizer=dict(lr=5e-4))
default_hooks = dict(checkpoint=dict(interval=restart_epochs))

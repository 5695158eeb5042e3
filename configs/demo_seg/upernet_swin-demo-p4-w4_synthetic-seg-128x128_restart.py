# Second cycle of the demo Swin UperNet's training (a warm restart of the linear decay):
# start from the 15000-iteration model of upernet_swin-demo-p4-w4_synthetic-seg-128x128.py
# and train 10000 more iterations at half its peak learning rate (its holdout mIoU had
# stopped rising while its training loss still fell). The exported demo model is the
# last iteration of this cycle; the architecture and data are those of the base.
_base_ = './upernet_swin-demo-p4-w4_synthetic-seg-128x128.py'
# igq_plugin.mm.checkpoint: mmengine's checkpoint loader with torch's weights_only kept
# (torch >= 2.6 refuses the training state in an mmengine checkpoint otherwise)
custom_imports = dict(imports=['igq_demo.seg_dataset', 'igq_plugin.mm.checkpoint'],
                      allow_failed_imports=False)

load_from = 'work_dirs/demo_seg_models/upernet_swin-demo/iter_15000.pth'
max_iters = 10000
warmup_iters = 200
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=warmup_iters,
         end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=2500)
default_hooks = dict(checkpoint=dict(interval=max_iters))

# IGQ-ViT W4/A4 of the demo Swin Cascade Mask R-CNN (allocation under the budget of G_avg = 8).
# Other methods / bits: --cfg-options model.backbone.quant.method=per-tensor
#                                     model.backbone.quant.w_bits=6 model.backbone.quant.a_bits=6
_base_ = './cascade-mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py'  # custom_imports of the plugin come with it
model = dict(
    backbone=dict(
        type='IGQBackbone',
        wrapped_type='SwinTransformer',
        quant=dict(method='igq', w_bits=4, a_bits=4, groups=8)))
# calibration: 27 train images (the paper's one COCO image in pixels), as in
# ../_base_/igq_quantization.py, of the demo dataset (the float config trains on
# data/synthetic_coco_2k, which `make demo` does not generate)
custom_hooks = [dict(type='IGQCalibrationHook')]
train_dataloader = dict(dataset=dict(data_root='data/synthetic_coco/'))

# IGQ-ViT W4/A4 of mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py:
# instance-aware groups with group-size allocation under the BOP budget of every
# layer at G_avg = 8 groups (G_avg = 12: --cfg-options model.backbone.quant.groups=12).
# Baselines by one key: --cfg-options model.backbone.quant.method=per-tensor
# (or static-group, igq-fixed, upper-bound).
_base_ = ['mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py', '../_base_/igq_quantization.py']
model = dict(
    backbone=dict(
        type='IGQBackbone',
        wrapped_type='SwinTransformer',
        init_cfg=None,  # weights come from the float checkpoint given to test.py
        quant=dict(method='igq', w_bits=4, a_bits=4, groups=8)))

# IGQ-ViT W6/A6 of ./cascade-mask-rcnn_swin-s-p4-w7_fpn_1x_coco.py:
# instance-aware groups with group-size allocation under the BOP budget of every
# layer at G_avg = 8 groups (G_avg = 12: --cfg-options model.backbone.quant.groups=12).
# Baselines by one key: --cfg-options model.backbone.quant.method=per-tensor
# (or static-group, igq-fixed, upper-bound).
_base_ = ['./cascade-mask-rcnn_swin-s-p4-w7_fpn_1x_coco.py', '../_base_/igq_quantization.py']
model = dict(
    backbone=dict(
        type='IGQBackbone',
        wrapped_type='SwinTransformer',
        init_cfg=None,  # weights come from the float checkpoint given to test.py
        quant=dict(method='igq', w_bits=6, a_bits=6, groups=8)))

# IGQ-ViT W6/A6: the W4/A4 config with 6-bit weights and activations.
_base_ = './igq-w4a4_cascade-mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
model = dict(backbone=dict(quant=dict(w_bits=6, a_bits=6)))

# IGQ-ViT W4/A4 of mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py:
# backbone, and the UperHead decode head (PPM, lateral / FPN convs, bottleneck; the
# classifier conv_seg and the auxiliary head stay float), allocation under the BOP
# budget of every layer at G_avg = 8 (12: --cfg-options model.backbone.quant.groups=12).
_base_ = [
    'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/igq_quantization.py'
]
model = dict(
    backbone=dict(
        type='IGQBackbone',
        wrapped_type='mmseg.SwinTransformer',
        init_cfg=None,  # weights come from the float checkpoint given to test.py
        quant=dict(method='igq', w_bits=4, a_bits=4, groups=8)))

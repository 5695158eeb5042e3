# IGQ-ViT W4/A4 of mmseg::swin/swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py
# (what is quantized: see the Swin-T config beside this one).
_base_ = [
    'mmseg::swin/swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py',
    '../_base_/igq_quantization.py'
]
model = dict(
    backbone=dict(
        type='IGQBackbone',
        wrapped_type='mmseg.SwinTransformer',
        init_cfg=None,  # weights come from the float checkpoint given to test.py
        quant=dict(method='igq', w_bits=4, a_bits=4, groups=8)))

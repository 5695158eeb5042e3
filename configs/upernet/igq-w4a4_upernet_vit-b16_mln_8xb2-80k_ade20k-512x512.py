# IGQ-ViT W4/A4 of mmseg::vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py: the ViT
# backbone, the multi-level neck's convolutions (its deconvolutions stay float) and the
# UperHead decode head, allocation at G_avg = 8.
_base_ = [
    'mmseg::vit/vit_vit-b16_mln_upernet_8xb2-80k_ade20k-512x512.py',
    '../_base_/igq_quantization.py'
]
model = dict(
    pretrained=None,  # weights come from the float checkpoint given to test.py
    backbone=dict(
        type='IGQBackbone',
        wrapped_type='mmseg.VisionTransformer',
        quant=dict(method='igq', w_bits=4, a_bits=4, groups=8)))

# IGQ-ViT W4/A4 of the demo Swin UperNet (backbone and decode head; allocation under the
# budget of G_avg = 8). Other methods / bits: --cfg-options model.backbone.quant.method=...
#     model.backbone.quant.w_bits=6 model.backbone.quant.a_bits=6
# (the plugin and hook of ../_base_/igq_quantization.py are set here: mmengine refuses a
# key, custom_imports, defined by two bases)
_base_ = './upernet_swin-demo-p4-w4_synthetic-seg-128x128.py'
custom_imports = dict(imports=['igq_plugin.mm', 'igq_demo.seg_dataset'],
                      allow_failed_imports=False)
# calibration: 60 train images (the paper's one COCO image in pixels) of the demo
# dataset (the float config trains on data/synthetic_seg_2k, which `make demo` does not
# generate)
custom_hooks = [dict(type='IGQCalibrationHook')]
train_dataloader = dict(dataset=dict(data_root='data/synthetic_seg/'))
model = dict(
    backbone=dict(
        type='IGQBackbone',
        wrapped_type='mmseg.SwinTransformer',
        quant=dict(method='igq', w_bits=4, a_bits=4, groups=8)))

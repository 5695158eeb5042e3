# IGQ-ViT post-training quantization: the plugin and its calibration hook.
# A leaf config inherits this and sets model.backbone to IGQBackbone (see README).
custom_imports = dict(imports=['igq_plugin.mm'], allow_failed_imports=False)
custom_hooks = [
    dict(
        type='IGQCalibrationHook',
        num_images=1,  # the paper's detection protocol: one calibration image
        dataloader=None,  # the dataloader of the loop about to evaluate (test or val)
        quantize_neck=True,
        quantize_roi_head=False)
]

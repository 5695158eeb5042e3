# IGQ-ViT post-training quantization: the plugin and its calibration hook.
# A leaf config inherits this and sets model.backbone to IGQBackbone; what is quantized
# (method, bits, groups, neck / roi_head / decode_head) is set in model.backbone.quant
# (README, "Methods and options").
custom_imports = dict(imports=['igq_plugin.mm'], allow_failed_imports=False)
custom_hooks = [
    dict(
        type='IGQCalibrationHook',
        num_images=1,  # the paper's detection protocol: one calibration image
        dataloader=None,  # the dataloader of the loop about to evaluate (test or val)
        # RoIs per image in the allocation's sensitivity search: None = every float
        # proposal (the method's definition); e.g. 100 = the best-scored 100, faster
        search_rois=None)
]

# IGQ-ViT post-training quantization: the plugin and its calibration hook.
# A leaf config inherits this and sets model.backbone to IGQBackbone; what is quantized
# (method, bits, groups, neck / roi_head / decode_head) is set in model.backbone.quant
# (README, "Methods and options").
custom_imports = dict(imports=['igq_plugin.mm'], allow_failed_imports=False)
custom_hooks = [
    dict(
        type='IGQCalibrationHook',
        # calibration images: None = as many as hold the pixels of the paper's one
        # ~800x1216 COCO image (1 at COCO size; 27 demo images of 192x192)
        num_images=None,
        # train images read with the evaluation pipeline: never an image evaluated
        dataloader='train',
        draw=0,  # the seed of the image sample; other draws give independent sets
        # RoIs per image in the allocation's sensitivity search: None = every float
        # proposal (the method's definition); e.g. 100 = the best-scored 100, faster
        search_rois=None)
]

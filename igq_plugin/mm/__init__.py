"""MMEngine / MMDetection / MMSegmentation integration.

The only sub-package that imports the mm libraries. Importing it registers, in
MMEngine's root registries (visible to mmdet and mmseg alike):

- ``IGQBackbone`` (``MODELS``): builds a Swin backbone and quantizes it;
- ``IGQCalibrationHook`` (``HOOKS``): calibrates and allocates before evaluation.

Use in a config::

    custom_imports = dict(imports=['igq_plugin.mm'], allow_failed_imports=False)
"""
from . import checkpoint  # noqa: F401  (allow mmengine checkpoints under weights_only)
from .backbone import SUPPORTED_BACKBONES, IGQBackbone, QuantState, is_quantized_backbone
from .calibration import (CalibrationReport, calibrate_model, check_quantized,
                          quantize_detector_parts, take_calibration_batches)
from .hook import IGQCalibrationHook

__all__ = [
    'SUPPORTED_BACKBONES', 'IGQBackbone', 'QuantState', 'is_quantized_backbone',
    'CalibrationReport', 'calibrate_model', 'check_quantized', 'quantize_detector_parts',
    'take_calibration_batches', 'IGQCalibrationHook'
]

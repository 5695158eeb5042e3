"""MMEngine / MMDetection / MMSegmentation integration.

The only sub-package that imports the mm libraries. Importing it registers, in
MMEngine's root registries (visible to mmdet and mmseg alike):

- ``IGQBackbone`` (``MODELS``): builds a Swin or ViT backbone and carries the
  quantization settings (``quant=dict(...)``);
- ``IGQCalibrationHook`` (``HOOKS``): converts, calibrates and allocates before evaluation;
- a ``CheckpointLoader`` scheme for ``*.igq.safetensors`` quantized-model files.

Use in a config::

    custom_imports = dict(imports=['igq_plugin.mm'], allow_failed_imports=False)
"""
from .backbone import SUPPORTED_BACKBONES, IGQBackbone
from .calibration import (calibrate_mm_model, log_report, predict_forward,
                          take_calibration_batches)
from .calibration_data import PAPER_CALIBRATION_PIXELS, draw_calibration_batches
from .convert import MMQuantSettings, fit_float_checkpoint, mm_settings, quantize_mm_model
from .hook import IGQCalibrationHook
from .predictors import build_predictor
from .quantized_model import export_mm_model, load_mm_quantized

__all__ = [
    'SUPPORTED_BACKBONES', 'IGQBackbone', 'calibrate_mm_model', 'log_report',
    'predict_forward', 'take_calibration_batches', 'PAPER_CALIBRATION_PIXELS',
    'draw_calibration_batches', 'MMQuantSettings', 'fit_float_checkpoint',
    'mm_settings', 'quantize_mm_model', 'IGQCalibrationHook', 'build_predictor',
    'export_mm_model', 'load_mm_quantized'
]

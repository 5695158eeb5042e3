"""IGQ-ViT: instance-aware group post-training quantization for vision transformers.

The core API (no mm library needed)::

    import igq_plugin
    igq_plugin.quantize_model(model, igq_plugin.QuantConfig(method='igq', w_bits=4, a_bits=4))
    igq_plugin.calibrate_model(model, batches, forward,
                               predictor=igq_plugin.ClassifierPredictor(model, batches, forward))

A calibrated model ships as one file::

    igq_plugin.export_quantized(model, 'model.igq.safetensors')
    model = igq_plugin.load_quantized(float_architecture, 'model.igq.safetensors')

``igq_plugin.mm`` registers the MMDetection / MMSegmentation integration.
"""
from . import adapters  # noqa: F401  (registers the attention adapters with igq_plugin.nn)
from .calibration import (CalibrationReport, ClassifierPredictor, calibrate_model,
                          check_quantized)
from .export import export_quantized, load_quantized
from .nn import (QuantConfig, QuantizationRecord, QuantState, float_run, quantization_record,
                 quantize_model)
from .search import FisherPredictor, SensitivityPredictor

__version__ = "0.1.0"

__all__ = ['CalibrationReport', 'ClassifierPredictor', 'calibrate_model', 'check_quantized',
           'export_quantized', 'load_quantized', 'QuantConfig', 'QuantizationRecord',
           'QuantState', 'float_run', 'quantization_record', 'quantize_model',
           'SensitivityPredictor', 'FisherPredictor']

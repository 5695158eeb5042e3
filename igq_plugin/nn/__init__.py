"""Quantized layers, model conversion and the quantized model's life cycle."""
from .convert import (QuantConfig, activation_quantizers, finalize_calibration,
                      float_layer_count, igq_quantizers, quantize_model, quantize_modules,
                      quantized_layer_count, register_float_layer, reset_statistics,
                      set_num_instances)
from .layers import (QKVQuantizer, QuantConv2d, QuantLinear, QuantSoftmax,
                     WeightQuantizedLayer)
from .lifecycle import (QuantizationRecord, QuantState, float_run, quantization_record,
                        require_record, set_quant_state)
from .reparam import apply_folds, post_norm_linears, restore_folds
from .state import STATE_FORMAT, export_state, import_state, quantizer_buffers

__all__ = [
    'QuantConfig', 'activation_quantizers', 'finalize_calibration', 'float_layer_count',
    'igq_quantizers', 'quantize_model', 'quantize_modules', 'quantized_layer_count',
    'register_float_layer', 'reset_statistics', 'set_num_instances', 'QKVQuantizer',
    'QuantConv2d', 'QuantLinear', 'QuantSoftmax', 'WeightQuantizedLayer',
    'QuantizationRecord', 'QuantState', 'float_run', 'quantization_record', 'require_record',
    'set_quant_state', 'apply_folds', 'post_norm_linears', 'restore_folds', 'STATE_FORMAT',
    'export_state', 'import_state', 'quantizer_buffers'
]

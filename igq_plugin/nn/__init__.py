"""Quantized layers and model conversion."""
from .convert import (QuantConfig, activation_quantizers, finalize_calibration,
                      float_layer_count, igq_quantizers, quantize_modules,
                      quantized_layer_count, register_float_layer, reset_statistics,
                      set_num_instances)
from .state import STATE_FORMAT, export_state, import_state, quantizer_buffers
from .layers import QKVQuantizer, QuantConv2d, QuantLinear, QuantSoftmax

__all__ = [
    'QuantConfig', 'activation_quantizers', 'finalize_calibration', 'float_layer_count',
    'igq_quantizers', 'quantize_modules', 'quantized_layer_count', 'register_float_layer', 'reset_statistics',
    'set_num_instances', 'STATE_FORMAT', 'export_state', 'import_state', 'quantizer_buffers', 'QKVQuantizer', 'QuantConv2d', 'QuantLinear', 'QuantSoftmax'
]

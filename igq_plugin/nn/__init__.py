"""Quantized layers and model conversion."""
from .convert import (QuantConfig, activation_quantizers, finalize_calibration,
                      float_layer_count, igq_quantizers, quantize_modules,
                      quantized_layer_count, reset_statistics, set_num_instances)
from .layers import QKVQuantizer, QuantConv2d, QuantLinear, QuantSoftmax

__all__ = [
    'QuantConfig', 'activation_quantizers', 'finalize_calibration', 'float_layer_count',
    'igq_quantizers', 'quantize_modules', 'quantized_layer_count', 'reset_statistics',
    'set_num_instances', 'QKVQuantizer', 'QuantConv2d', 'QuantLinear', 'QuantSoftmax'
]

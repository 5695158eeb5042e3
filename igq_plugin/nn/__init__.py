"""Quantized layers, model conversion and the quantized model's life cycle."""
from .attention import (AttentionAdapter, adapt_attention, find_adapter, quantizers_active,
                        register_adapter, registered_adapters)
from .config import QuantConfig, check_runs
from .convert import convertible_types, finalize_calibration, quantize_model, quantize_modules
from .layers import (QKVQuantizer, QuantConv2d, QuantLinear, QuantSoftmax,
                     WeightQuantizedLayer)
from .lifecycle import (QuantizationRecord, QuantState, float_run, quantization_record,
                        require_record, set_quant_state)
from .model_quantizers import (activation_quantizers, float_layer_count, igq_quantizers,
                               quantized_layer_count, reset_statistics, set_num_instances)
from .reparam import (add_fold_biases, apply_folds, fold_bias_names, mark_folds_applied,
                      post_norm_linears, restore_folds)
from .state import STATE_FORMAT, export_state, import_state, quantizer_buffers

__all__ = [
    'AttentionAdapter', 'adapt_attention', 'find_adapter', 'quantizers_active',
    'register_adapter', 'registered_adapters', 'QuantConfig', 'check_runs',
    'convertible_types', 'finalize_calibration', 'quantize_model', 'quantize_modules',
    'QKVQuantizer', 'QuantConv2d', 'QuantLinear', 'QuantSoftmax', 'WeightQuantizedLayer',
    'QuantizationRecord', 'QuantState', 'float_run', 'quantization_record', 'require_record',
    'set_quant_state', 'activation_quantizers', 'float_layer_count', 'igq_quantizers',
    'quantized_layer_count', 'reset_statistics', 'set_num_instances', 'add_fold_biases',
    'apply_folds', 'fold_bias_names', 'mark_folds_applied', 'post_norm_linears', 'restore_folds',
    'STATE_FORMAT', 'export_state', 'import_state', 'quantizer_buffers'
]

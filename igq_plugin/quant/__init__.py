"""Quantizer maths (pure functions) and quantizer modules."""
from .activation import (DEFAULT_CANDIDATES, GROUP_BOUNDS, KINDS, ActivationQuantizer,
                         FixedRangeQuantizer, IGQQuantizer, OpCost, PerTensorQuantizer,
                         StaticGroupQuantizer, UpperBoundQuantizer)
from . import compiled
from .compiled import compile_enabled, compiling, set_compile_enabled
from .methods import ACTIVATION_QUANTIZERS, METHODS, build_activation_quantizer, check_method
from .repq import REPQ_PERCENTILES, LogSqrt2Quantizer, RepQQuantizer
from .mode import QuantMode, mode_modules, parse_mode, quant_mode, set_mode
from .primitives import (MAX_BITS, MIN_BITS, check_bits, dequantize, fake_quantize,
                         fake_quantize_bounds, qmax, qparams_from_bounds, quantize)
from .weight import DEFAULT_PERCENTILES, WeightQuantizer, search_weight_qparams

__all__ = [
    'ACTIVATION_QUANTIZERS', 'DEFAULT_CANDIDATES', 'GROUP_BOUNDS', 'KINDS', 'METHODS', 'ActivationQuantizer', 'FixedRangeQuantizer', 'OpCost',
    'IGQQuantizer', 'PerTensorQuantizer', 'StaticGroupQuantizer', 'UpperBoundQuantizer',
    'build_activation_quantizer', 'check_method', 'QuantMode', 'mode_modules', 'parse_mode',
    'quant_mode', 'set_mode', 'MAX_BITS', 'MIN_BITS', 'check_bits', 'dequantize',
    'fake_quantize', 'fake_quantize_bounds', 'qmax', 'qparams_from_bounds', 'quantize',
    'DEFAULT_PERCENTILES', 'WeightQuantizer', 'search_weight_qparams', 'REPQ_PERCENTILES',
    'LogSqrt2Quantizer', 'RepQQuantizer', 'compiled', 'compile_enabled', 'compiling',
    'set_compile_enabled'
]

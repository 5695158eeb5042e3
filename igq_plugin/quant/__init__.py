"""Quantizer maths: pure functions over tensors, the mode switch and item layouts.

Imports only torch. The quantizer modules built on these are in
:mod:`igq_plugin.quantizers`.
"""
from .layout import (CHANNEL_FIRST, CHANNEL_LAST, KINDS, ChannelLayout, SoftmaxRowLayout,
                     build_layout, check_channel_dim, instance_channel_ranges,
                     softmax_row_max, split_instances)
from .mode import QuantMode, mode_modules, parse_mode, quant_mode, set_mode
from .primitives import (MAX_BITS, MIN_BITS, check_bits, dequantize, fake_quantize,
                         fake_quantize_bounds, qmax, qparams_from_bounds, quantize)

__all__ = [
    'CHANNEL_FIRST', 'CHANNEL_LAST', 'KINDS', 'ChannelLayout', 'SoftmaxRowLayout',
    'build_layout', 'check_channel_dim', 'instance_channel_ranges', 'softmax_row_max',
    'split_instances', 'QuantMode', 'mode_modules', 'parse_mode', 'quant_mode', 'set_mode',
    'MAX_BITS', 'MIN_BITS', 'check_bits', 'dequantize', 'fake_quantize',
    'fake_quantize_bounds', 'qmax', 'qparams_from_bounds', 'quantize'
]

"""Integer reference executor: Linear and Conv2d computed from integer codes.

:func:`to_integer_model` turns a calibrated fake-quant model into one whose
``QuantLinear`` / ``QuantConv2d`` layers hold integer weight codes and compute, per
instance and per channel group, exact integer sums of products of codes, rescaled
once per group (:mod:`.layers`, :mod:`.kernels`). The group of every channel comes
from the quantizer's own assignment code, so codes and groups equal the fake-quant
model's (:func:`activation_codes` exposes them).

What stays fake-quant: the Q/K/V output quantizers and the quantized softmax. The
attention matmuls (``q @ k^T``, ``attn @ v``) run in float on their dequantized
operands; only the Linear and convolution layers are integer here.
"""
from .codes import (SUPPORTED_QUANTIZERS, ActivationCodes, GroupAssignment, activation_codes,
                    check_supported, dequantize_codes, group_assignment, weight_codes)
from .convert import IntegerRecord, integer_record, to_integer_model
from .kernels import BACKENDS, exact_backend, onednn_available, partial_sum_bound
from .layers import IntegerConv2d, IntegerLinear

__all__ = ['SUPPORTED_QUANTIZERS', 'ActivationCodes', 'GroupAssignment', 'activation_codes',
           'check_supported', 'dequantize_codes', 'group_assignment', 'weight_codes',
           'IntegerRecord', 'integer_record', 'to_integer_model', 'BACKENDS', 'exact_backend',
           'onednn_available', 'partial_sum_bound', 'IntegerConv2d', 'IntegerLinear']

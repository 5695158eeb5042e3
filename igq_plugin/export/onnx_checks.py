"""Checks of an exported graph against the PyTorch quantizers it replaced.

With ``export_onnx(..., expose_codes=True)`` the graph outputs every quantizer's
input, codes and (IGQ) group indices as onnxruntime computed them. On that same input
the PyTorch quantizer must give the same integer codes and groups, element for
element: :func:`compare_codes` counts the disagreements per quantizer. (The end
outputs of the two runtimes are compared with a tolerance instead: their matmuls sum
in different orders, so a quantizer's input may differ in its last bits between the
runtimes, and a value at a rounding boundary may take the neighbouring code.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..nn.model_quantizers import activation_quantizers
from ..quant.layout import instance_param_view, row_param_view, split_instances
from ..quant.primitives import qparams_from_bounds, quantize
from ..quantizers import (ActivationQuantizer, FixedRangeQuantizer, IGQQuantizer,
                          PerTensorQuantizer)


def pytorch_codes(quantizer: ActivationQuantizer, x: torch.Tensor) -> torch.Tensor:
    """The integer codes (as float, shape of ``x``) the PyTorch quantizer gives ``x``.

    Uses the quantizer's own parameter choice (:meth:`IGQQuantizer.item_parameters`
    for IGQ) and :func:`~igq_plugin.quant.primitives.quantize`, which rounds
    ``x * (1/s)`` as the quantizer's fake-quantize does.
    """
    bits = quantizer.bits
    if isinstance(quantizer, IGQQuantizer):
        scale, zero = quantizer.item_parameters(x)
        if scale.dim() == 0:
            return quantize(x, scale, zero, bits)
        if not quantizer.layout.fixed_items:  # softmax rows
            return quantize(x, row_param_view(scale, x),
                            zero if zero.dim() == 0 else row_param_view(zero, x), bits)
        view, _ = split_instances(x, quantizer.channel_dim, quantizer.num_instances)
        scale = instance_param_view(scale, view, quantizer.channel_dim)
        zero = zero if zero.dim() == 0 else instance_param_view(zero, view,
                                                                quantizer.channel_dim)
        return quantize(view, scale, zero, bits).reshape(x.shape)
    if isinstance(quantizer, PerTensorQuantizer):
        lower, upper = quantizer.lower, quantizer.upper
    elif isinstance(quantizer, FixedRangeQuantizer):
        lower, upper = (quantizer.layout.per_channel(v) for v in (quantizer.lower,
                                                                   quantizer.upper))
    else:  # static groups
        lower, upper = (quantizer.layout.per_channel(v) for v in (quantizer.channel_lower,
                                                                   quantizer.channel_upper))
    scale, zero = qparams_from_bounds(lower, upper, bits)
    return quantize(x, scale, zero, bits)


@dataclass(frozen=True)
class CodeComparison:
    """One quantizer's codes and groups, onnxruntime against PyTorch on the same input.

    Attributes:
        name: the quantizer's module name.
        elements: codes compared.
        code_mismatches: codes that differ.
        items: group assignments compared (0 for quantizers without groups).
        group_mismatches: items assigned to another group.
    """

    name: str
    elements: int
    code_mismatches: int
    items: int
    group_mismatches: int


def compare_codes(model: nn.Module, export, outputs: dict[str, np.ndarray]
                  ) -> list[CodeComparison]:
    """Compare every recorded quantizer of ``export`` with ``model``'s.

    Args:
        model: the exported model (its quantizers still hold the instance counts of
            the exported input size).
        export: an :class:`~.onnx_graph.OnnxExport` written with ``expose_codes``.
        outputs: :func:`~.onnx_graph.run_onnx`'s result.

    Returns:
        One :class:`CodeComparison` per recorded quantizer, in graph order.

    Raises:
        ValueError: when the export recorded nothing (``expose_codes=False``).
    """
    if not export.recorded:
        raise ValueError('the export has no recorded codes: export with expose_codes=True')
    quantizers = _by_name(model)
    tensors: dict[str, dict[str, np.ndarray]] = {}
    for output, (name, kind) in export.recorded.items():
        tensors.setdefault(name, {})[kind] = outputs[output]
    results = []
    with torch.no_grad():
        for name, found in tensors.items():
            quantizer = quantizers[name]
            x = torch.from_numpy(np.ascontiguousarray(found['input']))
            codes = pytorch_codes(quantizer, x).numpy()
            code_mismatches = int((codes != found['codes']).sum())
            items = mismatches = 0
            if 'groups' in found:
                groups = quantizer.assign(x).reshape(-1).numpy()
                onnx_groups = found['groups'].reshape(-1)
                items = int(groups.size)
                mismatches = int((groups != onnx_groups).sum()) if groups.size == \
                    onnx_groups.size else items
            results.append(CodeComparison(name, int(codes.size), code_mismatches, items,
                                          mismatches))
    return results


def _by_name(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """Activation quantizers by module name (Q/K/V operands as ``<qkv>.q`` etc.)."""
    return activation_quantizers(model)

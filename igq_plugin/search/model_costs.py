"""Cost facts (:class:`~igq_plugin.search.bops.LayerCost`) of a calibrated model.

During calibration every quantized layer records, on its activation quantizer, the
input shape and the cost of the operation consuming the quantized tensor
(:class:`~igq_plugin.quantizers.OpCost`, see :mod:`igq_plugin.nn.layers`). This module turns those records
into :class:`LayerCost` entries for the BOP model. The figures describe the last
calibration forward (one image by default).
"""
from __future__ import annotations

from typing import Mapping

from ..quantizers import ActivationQuantizer
from .bops import LayerCost, layer_bops


def layer_cost(name: str, quantizer: ActivationQuantizer) -> LayerCost:
    """Cost facts of one quantized operand.

    Args:
        name: layer name used in tables.
        quantizer: a calibrated activation quantizer that recorded ``op_cost``.

    Raises:
        RuntimeError: when the quantizer never ran in calibrate mode.
    """
    op_cost = quantizer.op_cost
    shape = quantizer.last_input_shape
    if op_cost is None or shape is None:
        raise RuntimeError(f'{name}: no cost record; run calibration before the BOP model')
    elements = 1
    for size in shape:
        elements *= size
    if quantizer.kind == 'channel':
        channels = shape[quantizer.channel_dim]
        instances = quantizer.num_instances or shape[0]
        return LayerCost(name=name, kind='channel', macs=op_cost.macs,
                         w_bits=op_cost.other_bits, a_bits=quantizer.bits,
                         num_instances=instances, tokens=elements // (channels * instances),
                         channels=channels, out_elements=op_cost.out_elements)
    row_length = shape[-1]
    return LayerCost(name=name, kind='softmax', macs=op_cost.macs,
                     w_bits=op_cost.other_bits, a_bits=quantizer.bits, num_instances=1,
                     tokens=row_length, channels=elements // row_length,
                     out_elements=op_cost.out_elements, row_length=row_length)


def model_costs(quantizers: Mapping[str, ActivationQuantizer]) -> dict[str, LayerCost]:
    """:func:`layer_cost` of every quantizer, by name."""
    return {name: layer_cost(name, q) for name, q in quantizers.items()}


def total_bops(quantizers: Mapping[str, ActivationQuantizer]) -> int:
    """BOPs of all quantized operands with their active group counts.

    Each quantizer says what it is charged (:meth:`ActivationQuantizer.bop_groups`):
    the upper bound, one range per item, is charged as G equal to the item count.
    """
    total = 0
    for name, quantizer in quantizers.items():
        cost = layer_cost(name, quantizer)
        groups, dynamic = quantizer.bop_groups(cost.channels)
        total += layer_bops(cost, groups, dynamic=dynamic)
    return total

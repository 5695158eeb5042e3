"""Quantized weights in an ONNX graph: integer initializers plus ``DequantizeLinear``.

While a model is exported, every quantized layer's weight is replaced by its
fake-quantized value ``W_hat = s (q - z)`` (:func:`fake_quantized_weights`), so the
exported graph computes exactly the PyTorch fake-quant model. Afterwards
:func:`insert_dequantize_nodes` finds each ``W_hat`` initializer (under the
parameter's name, or, where the exporter folded a Linear weight's transpose into it,
by value as ``W_hat^T``) and replaces it with

    codes (uint4 / uint8 / uint16, shape of the initializer)
    scale (float32 [O]), zero_point ([O], the codes' type)
    DequantizeLinear(codes, scale, zero_point, axis) -> the same tensor name

``DequantizeLinear`` computes ``(q - z) * s`` in float32, the same bits as ``W_hat``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..quant.mode import ModeSwitchMixin, QuantMode
from ..integer import weight_codes
from ..quant.primitives import dequantize
from .weights import quantized_weights as parameters_and_quantizers


@dataclass(frozen=True)
class QuantizedWeight:
    """One layer's weight as integer codes with per-output-channel parameters.

    Attributes:
        name: the parameter's name in the model (e.g. ``'blocks.0.fc1.weight'``).
        codes: ``[O, ...]`` integer codes in ``[0, 2^bits - 1]`` (int64).
        scale: ``[O]`` float32 scales.
        zero_point: ``[O]`` integer zero points (int64).
        bits: weight bit-width.
    """

    name: str
    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int

    def dequantized(self) -> torch.Tensor:
        """``W_hat = s (q - z)``: ``[O, ...]`` float32, the fake-quantized weight."""
        shape = (-1,) + (1,) * (self.codes.dim() - 1)
        return dequantize(self.codes.float(), self.scale.view(shape),
                          self.zero_point.float().view(shape))


def quantized_weights(model: nn.Module) -> dict[str, QuantizedWeight]:
    """Every weight quantizer's weight as codes: ``{parameter name: QuantizedWeight}``
    (the parameters of :func:`igq_plugin.export.weights.quantized_weights`).

    Raises:
        ValueError: for an uncalibrated weight quantizer.
    """
    weights = {}
    for name, (weight, quantizer) in parameters_and_quantizers(model).items():
        if not bool(quantizer.calibrated):
            raise ValueError(f'{name}_quantizer is not calibrated; calibrate the model first')
        scale = quantizer.scale.detach().float()
        zero = quantizer.zero_point.detach().float()
        codes = weight_codes(weight.detach().float(), scale, zero, quantizer.bits)
        weights[name] = QuantizedWeight(name, codes.to(torch.int64), scale.clone(),
                                        zero.to(torch.int64), quantizer.bits)
    return weights


class PassThroughWeight(ModeSwitchMixin, nn.Identity):
    """Stands for a weight quantizer while the parameter holds ``W_hat``: in quantized
    mode like the quantizer it replaces (attention adapters test for active quantizers),
    with its ``bits`` (the layers read them for their cost records)."""

    mode = QuantMode.QUANTIZED

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits


@contextlib.contextmanager
def fake_quantized_weights(model: nn.Module, weights: dict[str, QuantizedWeight]
                           ) -> Iterator[None]:
    """Within the block, every quantized parameter holds ``W_hat`` and its weight
    quantizer is an ``nn.Identity``; the original parameters and quantizers return
    afterwards (parameters shared with another module stay shared)."""
    swaps = []
    for name, weight in weights.items():
        owner_name, _, attr = name.rpartition('.')
        owner = model.get_submodule(owner_name)
        swaps.append((owner, attr, getattr(owner, attr), nn.Parameter(
            weight.dequantized().to(getattr(owner, attr).dtype), requires_grad=False)))
        swaps.append((owner, f'{attr}_quantizer', getattr(owner, f'{attr}_quantizer'),
                      PassThroughWeight(weight.bits)))
    try:
        for owner, attr, _, replacement in swaps:
            setattr(owner, attr, replacement)
        yield
    finally:
        for owner, attr, original, _ in reversed(swaps):
            setattr(owner, attr, original)


def code_type(bits: int) -> int:
    """The ONNX element type of ``bits``-bit unsigned codes."""
    if bits <= 4:
        return TensorProto.UINT4
    return TensorProto.UINT8 if bits <= 8 else TensorProto.UINT16


def code_initializer(name: str, codes: np.ndarray, bits: int) -> onnx.TensorProto:
    """An unsigned integer initializer of ``codes`` (uint4 packed two per byte,
    the first element in the low nibble, as ONNX stores 4-bit tensors)."""
    element = code_type(bits)
    if element != TensorProto.UINT4:
        dtype = np.uint8 if element == TensorProto.UINT8 else np.uint16
        return numpy_helper.from_array(codes.astype(dtype), name)
    flat = codes.astype(np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.UINT4, codes.shape, packed.tobytes(), raw=True)


def _find_initializer(initializers: dict[str, onnx.TensorProto], weight: QuantizedWeight,
                      names: tuple[str, ...]) -> tuple[str, int] | None:
    """``(initializer name, axis)`` of the tensor that holds ``W_hat`` (axis 0) or a
    2-D ``W_hat^T`` (axis 1), matched by name first, then by value."""
    expected = weight.dequantized().numpy()
    for name in names:
        if name in initializers:
            array = numpy_helper.to_array(initializers[name])
            if array.shape == expected.shape and np.array_equal(array, expected):
                return name, 0
    if expected.ndim != 2:
        return None
    transposed = expected.T
    for name, tensor in initializers.items():
        if tuple(tensor.dims) == transposed.shape and tensor.data_type == TensorProto.FLOAT:
            if np.array_equal(numpy_helper.to_array(tensor), transposed):
                return name, 1
    return None


def insert_dequantize_nodes(model: onnx.ModelProto, weights: dict[str, QuantizedWeight],
                            prefix: str = '') -> dict[str, tuple[str, int]]:
    """Replace every ``W_hat`` initializer of ``model`` by codes + ``DequantizeLinear``.

    Args:
        model: the exported graph (changed in place).
        weights: from :func:`quantized_weights`.
        prefix: prefix of the parameter names in the exported module (e.g. ``'model.'``).

    Returns:
        ``{parameter name: (tensor name in the graph, axis)}``.

    Raises:
        RuntimeError: when a weight's ``W_hat`` is not an initializer of the graph (the
            exporter merged it into another constant): it is named.
    """
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    placed, nodes = {}, []
    for name, weight in weights.items():
        found = _find_initializer(initializers, weight, (prefix + name, name))
        if found is None:
            raise RuntimeError(f'the fake-quantized weight of {name!r} is not an initializer '
                               f'of the exported graph; cannot replace it by integer codes')
        tensor_name, axis = found
        codes = weight.codes.numpy()
        if axis == 1:
            codes = codes.T
        graph.initializer.remove(initializers.pop(tensor_name))
        graph.initializer.extend([
            code_initializer(f'{tensor_name}.codes', codes, weight.bits),
            numpy_helper.from_array(weight.scale.numpy().astype(np.float32),
                                    f'{tensor_name}.scale'),
            code_initializer(f'{tensor_name}.zero_point', weight.zero_point.numpy(),
                             weight.bits)])
        nodes.append(helper.make_node(
            'DequantizeLinear', [f'{tensor_name}.codes', f'{tensor_name}.scale',
                                 f'{tensor_name}.zero_point'], [tensor_name], axis=axis,
            name=f'dequantize:{tensor_name}'))
        placed[name] = (tensor_name, axis)
    # before every consumer: the graph's nodes are in topological order
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return placed

"""Export-mode activation quantizers: each quantizer's run-time rule in traceable ops.

The quantizer modules of :mod:`igq_plugin.quantizers` take fast paths (in-place
kernels, blocked reductions, integer views of softmax maps) that an exporter cannot
trace. While a model is exported, :func:`export_quantizers` swaps every activation
quantizer for the module below that computes the same codes with plain tensor ops,
each of which becomes one standard ONNX operator:

- :class:`ExportFixedQuantizer` (per-tensor, static-group, fixed-range): constant
  per-tensor or per-channel scale and zero point;
  ``q = Clip(Round(x * (1/s)) + z, 0, 2^b - 1)``, ``x_hat = (q - z) * s``;
- :class:`ExportGroupQuantizer` (IGQ): per instance the item ranges
  (``ReduceMin`` / ``ReduceMax`` over the instance's tokens; 0 and the row maximum for
  softmax rows), the group of every item (``ArgMin`` over a ``[..., G]`` table: the
  clipping ``(M - u_g)^+ + (l_g - m)^+`` in cover order for ``'cover'``, the squared
  distance to the centres for ``'nearest'``), ``Gather`` of that group's ``1/s``, ``z``
  and ``s``, then the same quantize/dequantize ops.

Every op is the one the PyTorch quantizer computes, in the same order, so the codes
agree bit for bit on the same input: the reciprocal ``1/s`` is taken per group (it is
``torch.reciprocal`` of the gathered scale), and ``ArgMin`` keeps the first minimum
like :func:`torch.argmin` (the narrowest covering group).

With a :class:`CodeRecorder`, every export module also returns its input, codes and
(IGQ) group indices, so that a test can compare them with the PyTorch quantizer.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..nn.layers import QKVQuantizer
from ..quant.mode import ModeSwitchMixin, QuantMode
from ..quant.primitives import qmax, qparams_from_bounds
from ..quantizers import (ActivationQuantizer, FixedRangeQuantizer, IGQQuantizer,
                          PerTensorQuantizer, StaticGroupQuantizer)

# Activation quantizer classes with an export-mode rule (exact classes: a subclass
# may change the rule).
EXPORTABLE_QUANTIZERS = (IGQQuantizer, PerTensorQuantizer, StaticGroupQuantizer,
                         FixedRangeQuantizer)


class ExportMode(ModeSwitchMixin):
    """Marks an export module as a quantizer in quantized mode: attention adapters
    then take their explicit path (where the quantizers sit), and the model's forward
    guard sees no quantizer left in float mode."""

    mode = QuantMode.QUANTIZED

    def record_cost(self, macs: int, out_elements: int, other_bits: int) -> None:
        """Layers report their cost to the quantizer they call (calibration only)."""


class CodeRecorder:
    """Collects ``(name, kind, tensor)`` from the export modules during one forward.

    ``kind`` is ``'input'`` (the quantizer's input), ``'codes'`` (the integer codes as
    float, shape of the input) or ``'groups'`` (IGQ: the group index of every item,
    ``[I, C]`` for channels, the map's shape without its last axis for softmax rows).
    """

    def __init__(self):
        self.entries: list[tuple[str, str, torch.Tensor]] = []

    def add(self, name: str, kind: str, tensor: torch.Tensor) -> None:
        self.entries.append((name, kind, tensor))


def _quantize_dequantize(x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor,
                         zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, x_hat)`` of :func:`~igq_plugin.quant.primitives.fake_quantize`,
    op for op: ``Mul``, ``Round``, ``Add``, ``Clip``, ``Sub``, ``Mul``."""
    codes = torch.clamp(torch.round(x * inv_scale) + zero, 0, qmax(bits))
    return codes, (codes - zero) * scale


class ExportFixedQuantizer(ExportMode, nn.Module):
    """A quantizer whose parameters do not depend on the input.

    Args:
        scale: ``s`` shaped to broadcast against the input (0-dim, ``[C]`` for
            tokens-last, ``[C, 1, 1]`` for channels-first inputs).
        zero: ``z``, the same shape (integers, as float).
        bits: bit-width.
        name: the replaced quantizer's module name (for recorded outputs).
        recorder: optional :class:`CodeRecorder`.
    """

    def __init__(self, scale: torch.Tensor, zero: torch.Tensor, bits: int, name: str,
                 recorder: CodeRecorder | None = None):
        super().__init__()
        self.register_buffer('scale', scale.detach().clone().float(), persistent=False)
        self.register_buffer('inv_scale', torch.reciprocal(self.scale), persistent=False)
        self.register_buffer('zero', zero.detach().clone().float(), persistent=False)
        self.bits, self.name, self.recorder = bits, name, recorder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, out = _quantize_dequantize(x, self.inv_scale, self.scale, self.zero, self.bits)
        if self.recorder is not None:
            self.recorder.add(self.name, 'input', x)
            self.recorder.add(self.name, 'codes', codes)
        return out

    def extra_repr(self) -> str:
        return f'bits={self.bits}, scale_shape={tuple(self.scale.shape)}'


def fixed_export_module(quantizer: ActivationQuantizer, name: str,
                        recorder: CodeRecorder | None = None) -> ExportFixedQuantizer:
    """The export module of a per-tensor, static-group or fixed-range quantizer."""
    if isinstance(quantizer, PerTensorQuantizer):
        lower, upper = quantizer.lower, quantizer.upper
    elif isinstance(quantizer, StaticGroupQuantizer):
        lower, upper = (quantizer.layout.per_channel(v) for v in (quantizer.channel_lower,
                                                                   quantizer.channel_upper))
    else:
        lower, upper = (quantizer.layout.per_channel(v) for v in (quantizer.lower,
                                                                   quantizer.upper))
    scale, zero = qparams_from_bounds(lower, upper, quantizer.bits)
    return ExportFixedQuantizer(scale, zero, quantizer.bits, name, recorder)


def _gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` as one ONNX ``Gather`` (advanced indexing exports as
    ``GatherND`` with an ``Unsqueeze`` per index)."""
    return torch.index_select(table, 0, index.reshape(-1)).reshape(index.shape)


class ExportGroupQuantizer(ExportMode, nn.Module):
    """:class:`~igq_plugin.quantizers.IGQQuantizer`'s run-time rule in traceable ops.

    Args:
        quantizer: a calibrated IGQ quantizer (its active G).
        num_instances: images ``I`` of the exported batch (``None``: every leading
            index is an instance), as the model's forward guard set it.
        name: the quantizer's module name (for recorded outputs).
        recorder: optional :class:`CodeRecorder`.
    """

    def __init__(self, quantizer: IGQQuantizer, num_instances: int | None, name: str,
                 recorder: CodeRecorder | None = None):
        super().__init__()
        tables = quantizer.group_tables()
        self.cover = quantizer.assignment == 'cover'
        self.softmax = not quantizer.layout.fixed_items
        self.channel_dim = quantizer.channel_dim
        self.bits, self.name, self.recorder = quantizer.bits, name, recorder
        self.num_instances = num_instances
        if self.cover:  # positions in cover order index the sorted tables
            lower, upper = tables.sorted_lower, tables.sorted_upper
            scale, zero = tables.sorted_scale, tables.sorted_zero
        else:  # the nearest centre indexes the tables in group order
            lower, upper = tables.centre_lower, tables.centre_upper
            scale, zero = tables.scale, tables.zero
        self.groups = int(upper.numel())
        # softmax rows start at 0: with every l_g = 0 the lower term is 0 for all groups
        self.lower_term = not (self.softmax and self.cover and not bool(lower.any()))
        buffers = dict(group_lower=lower, group_upper=upper, scale=scale, zero=zero,
                       inv_scale=torch.reciprocal(scale), order=tables.order)
        for key, value in buffers.items():
            self.register_buffer(key, value.detach().clone(), persistent=False)

    def _items(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(view, m, M)``: ``x`` with items on the last (tokens-last, softmax) or middle
        axis, and every item's range on its instance (``m`` is ``None`` for rows)."""
        if self.softmax:  # [..., N]: each row is an item with range [0, max]
            return x, None, torch.amax(x, dim=-1)
        if self.channel_dim == -1:  # [B', ..., C] -> [I, T, C]
            instances = self.num_instances or x.shape[0]
            view = x.reshape(instances, -1, x.shape[-1])
            return view, torch.amin(view, dim=1), torch.amax(view, dim=1)
        view = x.reshape(x.shape[0], x.shape[1], -1)  # [B, C, H, W] -> [B, C, T]
        return view, torch.amin(view, dim=2), torch.amax(view, dim=2)

    def _positions(self, lower: torch.Tensor | None, upper: torch.Tensor) -> torch.Tensor:
        """Index into the tables of every item: ``[*S]`` int64 from ``[*S]`` ranges."""
        if self.groups == 1:
            return torch.zeros(upper.shape, dtype=torch.long, device=upper.device)
        if lower is None:
            lower = torch.zeros_like(upper)
        if self.cover:  # clipping of the item by each group, narrowest first
            table = (upper.unsqueeze(-1) - self.group_upper).clamp(min=0)
            if self.lower_term:
                table = table + (self.group_lower - lower.unsqueeze(-1)).clamp(min=0)
        else:  # squared distance of the ranges to each group's centre
            d_upper = upper.unsqueeze(-1) - self.group_upper
            d_lower = lower.unsqueeze(-1) - self.group_lower
            table = d_upper * d_upper + d_lower * d_lower
        return torch.argmin(table, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view, lower, upper = self._items(x)
        position = self._positions(lower, upper)
        item_axis = -1 if self.softmax or self.channel_dim == -1 else 1
        inv_scale, scale = _gather(self.inv_scale, position), _gather(self.scale, position)
        zero = _gather(self.zero, position) if self.zero.dim() else self.zero
        if item_axis == -1 and not self.softmax:  # [I, C] -> [I, 1, C]
            inv_scale, scale = inv_scale.unsqueeze(1), scale.unsqueeze(1)
            zero = zero.unsqueeze(1) if zero.dim() else zero
        else:  # rows [..., 1]; channels-first [B, C, 1]
            inv_scale, scale = inv_scale.unsqueeze(-1), scale.unsqueeze(-1)
            zero = zero.unsqueeze(-1) if zero.dim() else zero
        codes, out = _quantize_dequantize(view, inv_scale, scale, zero, self.bits)
        if self.recorder is not None:
            self.recorder.add(self.name, 'input', x)
            self.recorder.add(self.name, 'codes', codes.reshape(x.shape))
            if self.groups > 1:  # with G=1 the groups are a constant the exporter folds away
                self.recorder.add(self.name, 'groups',
                                  _gather(self.order, position) if self.cover else position)
        return out.reshape(x.shape)

    def extra_repr(self) -> str:
        rule = 'cover' if self.cover else 'nearest'
        items = 'softmax rows' if self.softmax else f'channels (dim {self.channel_dim})'
        return f'bits={self.bits}, groups={self.groups}, assignment={rule}, items={items}'


class ExportQKVQuantizer(ExportMode, nn.Module):
    """:class:`~igq_plugin.nn.QKVQuantizer` over export modules: split, quantize, join."""

    def __init__(self, q: nn.Module, k: nn.Module, v: nn.Module):
        super().__init__()
        self.q, self.k, self.v = q, k, v

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """``qkv``: ``[B', N, 3C]`` -> same shape."""
        q, k, v = qkv.chunk(3, dim=-1)
        return torch.cat([self.q(q), self.k(k), self.v(v)], dim=-1)


def export_module(quantizer: ActivationQuantizer, name: str,
                  recorder: CodeRecorder | None = None) -> nn.Module:
    """The export-mode module of one calibrated activation quantizer.

    Raises:
        TypeError: for a quantizer without an export-mode rule (named, with the
            supported classes).
    """
    if type(quantizer) not in EXPORTABLE_QUANTIZERS:
        allowed = [cls.__name__ for cls in EXPORTABLE_QUANTIZERS]
        raise TypeError(f'{name}: {type(quantizer).__name__} (method '
                        f'{quantizer.method!r}) has no ONNX export rule; exportable are '
                        f'{allowed}')
    if isinstance(quantizer, IGQQuantizer):
        return ExportGroupQuantizer(quantizer, quantizer.num_instances, name, recorder)
    return fixed_export_module(quantizer, name, recorder)


def _replacements(model: nn.Module, recorder: CodeRecorder | None
                  ) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, child name, export module)`` for every quantizer of ``model``."""
    found = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            name = f'{parent_name}.{child_name}' if parent_name else child_name
            if isinstance(child, QKVQuantizer):
                parts = [export_module(getattr(child, p), f'{name}.{p}', recorder)
                         for p in 'qkv']
                found.append((parent, child_name, ExportQKVQuantizer(*parts)))
            elif isinstance(child, ActivationQuantizer) and not isinstance(parent, QKVQuantizer):
                found.append((parent, child_name, export_module(child, name, recorder)))
    return found


@contextlib.contextmanager
def export_quantizers(model: nn.Module, recorder: CodeRecorder | None = None
                      ) -> Iterator[list[str]]:
    """Swap every activation quantizer of ``model`` for its export module, and back.

    The instance counts are read from the quantizers as the model's last forward left
    them: run the model once on an input of the exported size first.

    Yields:
        The names of the replaced quantizers (Q/K/V operands as ``<qkv>.q`` etc.).
    """
    swaps = _replacements(model, recorder)  # every error before any swap
    originals = [(parent, child, getattr(parent, child)) for parent, child, _ in swaps]
    names = []
    try:
        for parent, child, module in swaps:
            setattr(parent, child, module)
        for parent_name, module in model.named_modules():
            if isinstance(module, (ExportFixedQuantizer, ExportGroupQuantizer)):
                names.append(parent_name)
        yield names
    finally:
        for parent, child, original in originals:
            setattr(parent, child, original)

"""The activation quantizer interface: mode handling, input checks, calibration.

Every quantizer is called like a function on the activation. Its behaviour follows
the mode switch (:mod:`igq_plugin.quant.mode`): in ``CALIBRATE`` mode it records
range statistics of every batch (never the activations themselves), ``finalize()``
turns them into parameters, and in ``QUANTIZED`` mode it fake-quantizes.

What forms one item (a channel of one instance, or a softmax row) is the quantizer's
:attr:`~ActivationQuantizer.layout` (:mod:`igq_plugin.quant.layout`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..quant.layout import KINDS, build_layout
from ..quant.mode import ModeSwitchMixin, QuantMode
from ..quant.primitives import check_bits

# The package's one definition of these constants (the config, the cost model and the
# reports import them from here).
GROUP_BOUNDS = ('mean', 'envelope', 'mse')
DEFAULT_CANDIDATES = (1, 2, 4, 8, 12, 16)

__all__ = ['KINDS', 'GROUP_BOUNDS', 'DEFAULT_CANDIDATES', 'OpCost', 'ActivationQuantizer']


@dataclass(frozen=True)
class OpCost:
    """Cost of the operation that consumes a quantized activation (for the BOP model).

    Attributes:
        macs: multiply-accumulates of that operation on the last calibration batch.
        out_elements: its output elements (each partial-sum group adds a float add).
        other_bits: bit-width of the operation's other operand (weights, or K/V).
    """

    macs: int
    out_elements: int
    other_bits: int


class ActivationQuantizer(ModeSwitchMixin, nn.Module):
    """Base class: mode handling, input checks and calibration bookkeeping.

    Args:
        bits: activation bit-width (2..16).
        channels: channel count ``C`` for ``kind='channel'``; ignored for softmax.
        kind: ``'channel'`` or ``'softmax'`` (see :func:`~igq_plugin.quant.layout.build_layout`).
        channel_dim: ``-1`` for tokens-last inputs ``[B', ..., C]``, ``1`` for
            channels-first inputs ``[B, C, H, W]``.
        name: layer name used in error messages and reports.

    Attributes:
        layout: which entries form one item (:class:`~igq_plugin.quant.layout.ChannelLayout`
            or :class:`~igq_plugin.quant.layout.SoftmaxRowLayout`).
        num_instances: images in the current batch. ``None`` treats every leading
            index of the input as its own instance; wrappers of windowed attention set
            it so that the windows of one image form one instance.
        layer_name: name used in error messages and reports (set by model conversion).
        op_cost: cost of the consuming operation, recorded by the layer wrapper in
            ``CALIBRATE`` mode (:meth:`record_cost`); ``None`` until then.
        last_input_shape: shape of the last calibration input (for the cost model).
        post_norm: whether the quantizer folds its input's channel scales into the
            LayerNorm before it (``repq``, ``igq-reparam``); such a quantizer has the
            ``folded`` buffer and ``fold_factors()``.
    """

    method = 'base'
    post_norm = False

    def __init__(self, bits: int, channels: int | None = None, kind: str = 'channel',
                 channel_dim: int = -1, name: str = ''):
        super().__init__()
        self.layer_name = name
        label = name or 'activation quantizer'
        try:
            self.layout = build_layout(kind, channel_dim)
        except ValueError as error:
            raise ValueError(f'{label}: {error}') from None
        if self.layout.fixed_items and (not isinstance(channels, int) or channels < 1):
            raise ValueError(f'{label}: channels={channels!r}: a channel quantizer needs a '
                             f'positive channel count')
        self.bits = check_bits(bits, 'a_bits')
        self.channels = channels if self.layout.fixed_items else None
        self.num_instances: int | None = None
        self.observed_batches = 0
        self.last_input_shape: tuple[int, ...] | None = None
        self.op_cost: OpCost | None = None
        self.register_buffer('calibrated', torch.tensor(False))

    @property
    def kind(self) -> str:
        """``'channel'`` or ``'softmax'``: the layout's name (the cost model's key)."""
        return self.layout.kind

    @property
    def channel_dim(self) -> int:
        """The channel dimension of the input (``-1`` for softmax maps)."""
        return self.layout.channel_dim

    @property
    def item_name(self) -> str:
        """What this quantizer groups, for messages: channels or softmax rows."""
        return self.layout.item_name

    @classmethod
    def build(cls, method: str, bits: int, *, groups: int, candidates: Sequence[int],
              distance: str, bounds: str, assignment: str, post_norm: bool = False,
              include_zero: bool = True, **common) -> 'ActivationQuantizer':
        """Construct from the config's options; each class takes the ones it uses."""
        return cls(bits, **common)

    def record_cost(self, macs: int, out_elements: int, other_bits: int) -> None:
        """Record the consuming operation's cost; only in ``CALIBRATE`` mode."""
        if self.mode is QuantMode.CALIBRATE:
            self.op_cost = OpCost(int(macs), int(out_elements), int(other_bits))

    def bop_groups(self, items: int) -> tuple[int, bool]:
        """``(G, dynamic)`` the BOP model charges: groups in use and whether they are
        assigned per instance at run time. ``items``: channels or softmax rows."""
        return 1, False

    # -- mode dispatch -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity (float), identity plus statistics (calibrate) or fake-quantize."""
        if self.mode is QuantMode.FLOAT or x.numel() == 0:  # e.g. no RoI in an image
            return x
        if self.mode is QuantMode.CALIBRATE:
            self._observe_checked(x.detach())
            return x
        if not bool(self.calibrated):
            raise RuntimeError(f'{self._label()} used in quantized mode before '
                               f'calibration: calibrate (or load a calibrated state) first')
        if self.mode is QuantMode.RECALIBRATE:
            self._observe_checked(x.detach())
        return self.quantize(x)

    def _label(self) -> str:
        return f'{type(self).__name__}({self.layer_name or self.kind})'

    def _observe_checked(self, x: torch.Tensor) -> None:
        if self.layout.fixed_items and x.shape[self.channel_dim] != self.channels:
            raise ValueError(f'{self._label()} was built for {self.channels} channels but got '
                             f'an input of shape {tuple(x.shape)}')
        if not torch.isfinite(x).all():
            raise ValueError(f'{self._label()}: calibration activations contain NaN or Inf '
                             f'(input shape {tuple(x.shape)}); check the model and images')
        self.observe(x)
        self.observed_batches += 1
        self.last_input_shape = tuple(x.shape)

    # -- calibration -----------------------------------------------------------------
    def finalize(self) -> None:
        """Turn the recorded statistics into quantizer parameters.

        Raises:
            ValueError: when no batch was observed (empty calibration set).
        """
        if self.observed_batches == 0:
            raise ValueError(f'{self._label()}: empty calibration, no batch was observed; '
                             f'calibrate on at least one image')
        self.compute_parameters()
        self.calibrated.fill_(True)

    def unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """The input as it was before a LayerNorm fold: ``x = (x' + b) r`` along the
        channels while the fold ``(r, b)`` is applied to the weights (the ``RECALIBRATE``
        pass of a folding method), else ``x``; so a folding quantizer's statistics are
        always of the unfolded input."""
        if not self.post_norm or not bool(self.folded):
            return x
        ratio, shift = self.fold_factors()
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return (x + shift.to(x.dtype).view(shape)) * ratio.to(x.dtype).view(shape)

    def observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one batch (no activation is kept)."""
        raise NotImplementedError

    def compute_parameters(self) -> None:
        """Compute parameters from the accumulated statistics."""
        raise NotImplementedError

    def reset_statistics(self) -> None:
        """Forget recorded statistics (parameters are kept)."""
        self.observed_batches = 0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` with calibrated parameters."""
        raise NotImplementedError

    def item_ranges(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item's range on this input: ``([I, C], [I, C])`` for channels,
        ``([R], [R])`` for softmax rows (lower bounds 0)."""
        return self.layout.ranges(x, self.num_instances)

    def extra_repr(self) -> str:
        items = (f'channels={self.channels}' if self.layout.fixed_items
                 else self.layout.item_name)
        return f'method={self.method}, a_bits={self.bits}, {items}'

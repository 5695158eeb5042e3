"""What to quantize and how: the one settings object of a conversion."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..grouping import check_assignment, check_distance
from ..quant.primitives import check_bits
from ..quantizers import (ALLOCATING_METHODS, DEFAULT_CANDIDATES, DEFAULT_PERCENTILES,
                          FOLDING_METHODS, GROUP_BOUNDS, REPQ_PERCENTILES, ActivationQuantizer,
                          build_activation_quantizer, check_method)

CALIBRATION_ORDERS = ('float', 'quantized')
REPQ_PUBLISHED = ('range', 'padding', 'first-weights')
REPQ_SEARCHES = ('one-batch', 'per-batch')


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    Attributes:
        method: activation quantizer: ``per-tensor``, ``repq`` (RepQ-ViT, the peer:
            per-tensor with percentile ranges, post-LayerNorm scales folded into the
            weights, log2 softmax), ``static-group``, ``igq-fixed``, ``igq`` (with
            allocation), ``igq-reparam`` (``igq`` after RepQ-ViT's fold of the
            post-LayerNorm inputs' static per-channel spread; deployed like ``igq``) or
            ``upper-bound``.
        w_bits: weight bit-width (per output channel).
        a_bits: activation bit-width.
        groups: G for ``static-group`` / ``igq-fixed``, and ``G_avg`` of the allocation
            budget for ``igq``. Capped per layer at the layer's channel count (e.g. the
            3 channels of an image input) [choice].
        candidates: group counts calibrated for the allocation.
        distance: ``'l2'`` or ``'l1'`` range distance of the assignment.
        bounds: IGQ group quantization range, ``'envelope'`` (default), ``'mean'`` or
            ``'mse'`` (see :class:`~igq_plugin.quantizers.IGQQuantizer`).
        assignment: IGQ run-time group choice, ``'cover'`` (default) or
            ``'nearest'`` (see :class:`~igq_plugin.quantizers.IGQQuantizer`).
        attention: also quantize Q/K/V operands and the softmax attention.
        first_layer_bits: bits of the first layer's weights and input [choice: 8].
        weight_percentiles: clipping percentiles searched per weight channel;
            ``None``: the method's own (RepQ-ViT's for ``repq``, else
            :data:`~igq_plugin.quantizers.DEFAULT_PERCENTILES`).
        calibration_order: what the activation quantizers are calibrated on:
            ``'float'`` (default: the float model's activations, one pass) or
            ``'quantized'`` (a second pass re-calibrates every quantizer on the
            activations of the model quantized with the first pass's parameters, the
            order of RepQ-ViT's published code, where every layer sees quantized
            upstream activations; twice the calibration forwards).
        repq_published: behaviours of RepQ-ViT's published code to adopt instead of this
            package's choices, for the study of their effect (docs/method.md, section
            8): ``'range'`` (``repq``'s ranges as found, not widened to contain 0, zero
            points unclamped), ``'padding'`` (a zero-padded token after a LayerNorm
            fold is left at 0 rather than mapped to the fold of 0) and
            ``'first-weights'`` (the first layer's weights at ``w_bits``; its input stays
            at ``first_layer_bits``). ``'range'`` acts on ``repq``, ``'padding'`` on the
            folding methods, ``'first-weights'`` on every method.
        repq_search: how ``repq``'s percentile search treats several calibration
            batches: ``'one-batch'`` (default, as RepQ-ViT's code, which calibrates on
            one batch: every batch's activations are kept and searched once together)
            or ``'per-batch'`` (each batch searched on its own, the winners' bounds
            averaged; only statistics are kept, for calibration sets whose activations
            do not fit in memory).
    """

    method: str = 'igq'
    w_bits: int = 4
    a_bits: int = 4
    groups: int = 8
    candidates: Sequence[int] = DEFAULT_CANDIDATES
    distance: str = 'l2'
    bounds: str = 'envelope'
    assignment: str = 'cover'
    attention: bool = True
    first_layer_bits: int = 8
    weight_percentiles: Sequence[float] | None = None
    calibration_order: str = 'float'
    repq_published: Sequence[str] = ()
    repq_search: str = 'one-batch'

    def __post_init__(self):
        check_method(self.method)
        check_bits(self.w_bits, 'w_bits')
        check_bits(self.a_bits, 'a_bits')
        check_bits(self.first_layer_bits, 'first_layer_bits')
        check_distance(self.distance)
        check_assignment(self.assignment)
        if self.calibration_order not in CALIBRATION_ORDERS:
            raise ValueError(f'calibration_order={self.calibration_order!r} is not supported: '
                             f'allowed are {CALIBRATION_ORDERS}')
        published = tuple(self.repq_published)
        if isinstance(self.repq_published, str) or \
                any(item not in REPQ_PUBLISHED for item in published):
            raise ValueError(f'repq_published={self.repq_published!r}: allowed are subsets of '
                             f'{REPQ_PUBLISHED}')
        object.__setattr__(self, 'repq_published', published)
        if self.repq_search not in REPQ_SEARCHES:
            raise ValueError(f'repq_search={self.repq_search!r} is not supported: allowed are '
                             f'{REPQ_SEARCHES}')
        if self.bounds not in GROUP_BOUNDS:
            raise ValueError(f'bounds={self.bounds!r} is not supported: allowed are {GROUP_BOUNDS}')
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f'groups={self.groups!r}: must be a positive integer')
        candidates = tuple(self.candidates)
        if not candidates or any(isinstance(g, bool) or not isinstance(g, int) or g < 1
                                 for g in candidates):
            raise ValueError(f'candidates={candidates!r}: must be positive integers')
        if self.method == 'igq-reparam' and self.bounds == 'mse':
            raise ValueError("bounds='mse' is not supported with method='igq-reparam' (its "
                             "histograms are of the unfolded inputs): use 'envelope' or 'mean'")
        if self.method.startswith('igq') and self.groups not in candidates:
            raise ValueError(f'groups={self.groups} is not one of candidates={candidates}: '
                             f'add it to candidates or choose one of them')
        object.__setattr__(self, 'candidates', candidates)
        if self.weight_percentiles is None:
            object.__setattr__(self, 'weight_percentiles', REPQ_PERCENTILES
                               if self.method == 'repq' else DEFAULT_PERCENTILES)
        object.__setattr__(self, 'weight_percentiles', tuple(self.weight_percentiles))

    @property
    def allocates(self) -> bool:
        """Whether calibration allocates group sizes (sensitivity search, BOP budget)."""
        return self.method in ALLOCATING_METHODS

    @property
    def folds(self) -> bool:
        """Whether the post-LayerNorm inputs' channel scales are folded into the weights."""
        return self.method in FOLDING_METHODS

    def activation_quantizer(self, bits: int, channels: int | None, kind: str = 'channel',
                             channel_dim: int = -1, name: str = '',
                             post_norm: bool = False) -> ActivationQuantizer:
        """Build this config's activation quantizer for one layer named ``name``
        (``post_norm``: the input of a Linear that follows a LayerNorm)."""
        groups = self.groups if channels is None else min(self.groups, channels)
        quantizer = build_activation_quantizer(
            self.method, bits, channels, kind, channel_dim, groups, self.candidates,
            self.distance, self.bounds, self.assignment, name=name, post_norm=post_norm,
            include_zero='range' not in self.repq_published)
        if hasattr(quantizer, 'one_batch'):  # RepQ-ViT's quantizers
            quantizer.one_batch = self.repq_search == 'one-batch'
        return quantizer

    def as_dict(self) -> dict:
        """The settings as plain values (for state files and logs)."""
        return {key: (list(value) if isinstance(value, tuple) else value)
                for key, value in self.__dict__.items()}


def check_runs(methods: Sequence[str], bits: Sequence[int], groups: int) -> None:
    """Validate every (method, W/A bits, G) combination a tool will run, up front.

    Raises:
        ValueError: as :class:`QuantConfig` does, naming the value and what is allowed.
    """
    for method in methods:
        for width in bits:
            QuantConfig(method=method, w_bits=width, a_bits=width, groups=groups)

"""RepQ-ViT's activation quantizers, in this package's harness (docs/method.md, section 8).

RepQ-ViT (Li et al., ICCV 2023) quantizes

- every activation with one uniform asymmetric quantizer per tensor, its range chosen
  among the ``[100 - p, p]`` percentiles for ``p`` in {99.9, 99.99, 99.999} by the
  lowest mean squared error (:class:`RepQQuantizer`);
- the input of a Linear that follows a LayerNorm first per channel; the per-channel
  scales are then folded into the LayerNorm and the Linear so that the input becomes
  per tensor (:class:`RepQQuantizer` with ``post_norm=True``; the fold itself is
  :mod:`igq_plugin.nn.reparam`);
- the softmax output with a log2 quantizer of sqrt(2) resolution, its largest value
  ``delta`` chosen among the same percentiles by MSE (:class:`LogSqrt2Quantizer`).

With several calibration batches, every batch's activations are kept and the search
runs once over all of them, as over the one batch of RepQ-ViT's code (``one_batch =
True``, the default). ``one_batch = False`` (``QuantConfig(repq_search='per-batch')``)
keeps statistics only: each candidate's MSE is summed over the batches and the winner's
bounds are averaged over them [choice, for calibration sets whose activations do not fit
in memory; on held-out images it is the weaker, docs/method.md, section 8].
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..quant.percentile import check_percentiles, clipping_candidates, sorted_percentile
from ..quant.primitives import (fake_quantize, log_sqrt2_fake_quantize, qmax, qparams_from_bounds)
from .base import ActivationQuantizer

# RepQ-ViT's upper percentiles {99.9, 99.99, 99.999}, as clipping ``eps`` (percent).
REPQ_PERCENTILES = (0.1, 0.01, 0.001)


class _CandidateStatistics:
    """Sums over calibration batches of every candidate's MSE and bounds ``[P, R]``."""

    def __init__(self):
        self.error = self.lower = self.upper = None

    def add(self, error: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> None:
        if self.error is None:
            self.error, self.lower, self.upper = error.clone(), lower.clone(), upper.clone()
        else:
            self.error += error
            self.lower += lower
            self.upper += upper

    def best(self, batches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``([R], [R])`` mean bounds of the candidate with the lowest summed MSE."""
        pick = self.error.argmin(0, keepdim=True)
        return (self.lower.gather(0, pick)[0] / batches, self.upper.gather(0, pick)[0] / batches)


class RepQQuantizer(ActivationQuantizer):
    """Per-tensor uniform quantizer with RepQ-ViT's percentile search.

    With ``post_norm=True`` (the input of a Linear that follows a LayerNorm) the
    calibration is per channel; :func:`igq_plugin.nn.reparam.apply_folds` then folds
    the channel scales into the LayerNorm and the Linear and calls :meth:`fold`, after
    which the quantizer is per tensor with ``s~ = mean(s_c)``, ``z~ = mean(z_c)``.

    Args:
        bits, channels, kind, channel_dim, name: as :class:`ActivationQuantizer`
            (``kind='channel'``; softmax maps use :class:`LogSqrt2Quantizer`).
        post_norm: calibrate per channel, to be folded.
        percentiles: clipping candidates ``eps`` (percent).
        include_zero: widen every range to contain 0 and keep the zero point in the
            code range (this package's choice, as PyTorch's observers); ``False``: the
            range as found, the zero point unclamped (RepQ-ViT's published quantizer).

    Buffers:
        lower, upper: ``[R]`` calibrated bounds, ``R = channels`` when ``post_norm``
            else 1.
        folded: whether the per-channel quantizer was folded to per tensor.
        fold_scale, fold_zero: the per-tensor ``s~`` and ``z~`` after the fold (``z~``
            is a mean of integers, not rounded, as in RepQ-ViT).
    """

    method = 'repq'
    one_batch = True  # search once over every batch's kept activations (else per batch)

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, name='',
                 post_norm: bool = False, percentiles: Sequence[float] = REPQ_PERCENTILES,
                 include_zero: bool = True):
        super().__init__(bits, channels, kind, channel_dim, name)
        self.include_zero = bool(include_zero)
        if self.kind != 'channel':
            raise ValueError(f'{self._label()}: RepQQuantizer quantizes channels; softmax '
                             f'maps use LogSqrt2Quantizer')
        self.post_norm = bool(post_norm)
        self.percentiles = check_percentiles(percentiles)
        size = self.channels if self.post_norm else 1
        self.register_buffer('lower', torch.zeros(size))
        self.register_buffer('upper', torch.zeros(size))
        self.register_buffer('folded', torch.tensor(False))
        self.register_buffer('fold_scale', torch.ones(()))
        self.register_buffer('fold_zero', torch.zeros(()))
        self._statistics = _CandidateStatistics()
        self._kept: list[torch.Tensor] = []  # one_batch: every batch's [R, K] rows

    @classmethod
    def build(cls, method, bits, *, groups, candidates, distance, bounds, assignment,
              post_norm=False, include_zero=True, **common):
        if common.get('kind') == 'softmax':
            return LogSqrt2Quantizer(bits, **common)
        return cls(bits, post_norm=post_norm, include_zero=include_zero, **common)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[R, K]``: one row per channel (``post_norm``) or the whole tensor."""
        if not self.post_norm:
            return x.reshape(1, -1)
        return x.movedim(self.channel_dim, -1).reshape(-1, self.channels).t()

    def observe(self, x):
        rows = self._rows(self.unfolded(x))
        if self.one_batch:  # a copy: the model may later change its activations in place
            self._kept.append(rows.detach().to('cpu', torch.float32, copy=True))
            return
        self._statistics.add(*clipping_candidates(rows, self.bits, self.percentiles,
                                                  self.include_zero))

    def reset_statistics(self):
        super().reset_statistics()
        self._statistics = _CandidateStatistics()
        self._kept = []

    def compute_parameters(self):
        if self.one_batch:  # one search over every kept activation
            self._statistics = _CandidateStatistics()
            self._statistics.add(*clipping_candidates(torch.cat(self._kept, dim=1), self.bits,
                                                      self.percentiles, self.include_zero))
        batches = 1 if self.one_batch else self.observed_batches
        lower, upper = self._statistics.best(batches)
        self.lower.copy_(lower)
        self.upper.copy_(upper)
        self.folded.fill_(False)

    def channel_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([R], [R])`` scale and (integer) zero point of the calibrated bounds."""
        return qparams_from_bounds(self.lower, self.upper, self.bits, self.include_zero)

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Switch a calibrated ``post_norm`` quantizer to per tensor.

        Returns:
            ``(r, b)``, each ``[C]``: ``r_c = s_c / s~`` and ``b_c = s~ (z~ - z_c)``. The
            caller rescales the float input to ``x' = x / r - b`` (the LayerNorm's
            affine) and the next layer's weights to compensate; then quantizing ``x'``
            per tensor with ``(s~, z~)`` reproduces the per-channel codes of ``x``
            (exactly when ``z~`` is an integer).
        """
        if not self.post_norm or not bool(self.calibrated):
            raise RuntimeError(f'{self._label()}: only a calibrated post_norm quantizer '
                               f'can be folded')
        scale, zero = self.channel_qparams()
        self.fold_scale.copy_(scale.mean())
        self.fold_zero.copy_(zero.mean())
        self.folded.fill_(True)
        return self.fold_factors()

    def fold_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, b)`` of the fold recorded in the buffers (see :meth:`fold`)."""
        scale, zero = self.channel_qparams()
        return scale / self.fold_scale, self.fold_scale * (self.fold_zero - zero)

    def quantize(self, x):
        if self.folded:
            return fake_quantize(x, self.fold_scale, self.fold_zero, self.bits)
        if self.post_norm:
            raise RuntimeError(f'{self._label()}: a post-LayerNorm input is quantized only '
                               f'after its fold into the LayerNorm (apply_folds); this one '
                               f'was not folded')
        scale, zero = self.channel_qparams()
        return fake_quantize(x, scale[0], zero[0], self.bits,
                             integer_zero_point=self.include_zero)

    def extra_repr(self):
        return (super().extra_repr() + f', post_norm={self.post_norm}, '
                f'percentiles={self.percentiles}'
                + ('' if self.include_zero else ', include_zero=False'))


class LogSqrt2Quantizer(ActivationQuantizer):
    """RepQ-ViT's softmax quantizer: ``x_hat = delta * 2^(-q/2)``,
    ``q = clamp(round(-2 log2(x / delta)), 0, 2^b - 1)`` (codes past the top and
    ``x = 0`` give 0); ``delta`` is the ``p``-th percentile of the attention
    probabilities with the lowest MSE among RepQ-ViT's candidates.

    Buffers:
        delta: the largest representable value (0-dim).
    """

    method = 'repq'
    one_batch = True  # as RepQQuantizer.one_batch

    def __init__(self, bits, channels=None, kind='softmax', channel_dim=-1, name='',
                 percentiles: Sequence[float] = REPQ_PERCENTILES):
        super().__init__(bits, channels, kind, channel_dim, name)
        if self.kind != 'softmax':
            raise ValueError(f'{self._label()}: LogSqrt2Quantizer quantizes softmax maps')
        self.percentiles = check_percentiles(percentiles)
        self.register_buffer('delta', torch.ones(()))
        self._error = self._delta = None
        self._kept: list[torch.Tensor] = []

    def observe(self, x):
        if self.one_batch:  # a copy, as in RepQQuantizer.observe
            self._kept.append(x.detach().reshape(-1).to('cpu', torch.float32, copy=True))
            return
        self._add_candidates(x.reshape(-1).float().sort().values)

    def _add_candidates(self, values: torch.Tensor) -> None:
        """Add every candidate's MSE and ``delta`` on sorted ``values`` ``[N]``."""
        errors, deltas = [], []
        for eps in self.percentiles:
            delta = sorted_percentile(values[None], 100.0 - eps)[0]
            delta = torch.clamp(delta, min=torch.finfo(torch.float32).tiny)
            errors.append((log_sqrt2_fake_quantize(values, delta, self.bits) - values)
                          .pow_(2).mean())
            deltas.append(delta)
        errors, deltas = torch.stack(errors), torch.stack(deltas)
        if self._error is None:
            self._error, self._delta = errors, deltas
        else:
            self._error, self._delta = self._error + errors, self._delta + deltas

    def reset_statistics(self):
        super().reset_statistics()
        self._error = self._delta = None
        self._kept = []

    def compute_parameters(self):
        batches = self.observed_batches
        if self.one_batch:
            self._error = self._delta = None
            self._add_candidates(torch.cat(self._kept).sort().values)
            batches = 1
        self.delta.copy_(self._delta[self._error.argmin()] / batches)

    def quantize(self, x):
        return log_sqrt2_fake_quantize(x, self.delta.to(x.dtype), self.bits)

    def extra_repr(self):
        return super().extra_repr() + f', levels={qmax(self.bits) + 1}, log2-sqrt2'

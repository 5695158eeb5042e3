"""Per-output-channel weight quantizer with percentile bounds (docs/method.md, section 2).

Bounds of channel ``c`` are the ``eps``-th and ``(100 - eps)``-th percentiles of
its weights. The paper does not give ``eps``; the default searches a few candidates
and keeps, per channel, the one with the lowest weight MSE [choice].
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..quant.mode import ModeSwitchMixin, QuantMode
from ..quant.percentile import check_percentiles, search_clipping
from ..quant.primitives import check_bits, fake_quantize, qparams_from_bounds

DEFAULT_PERCENTILES = (0.0, 0.01, 0.1, 0.5, 1.0)


def search_weight_qparams(weight: torch.Tensor, bits: int,
                          percentiles: Sequence[float] = DEFAULT_PERCENTILES
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel scale and zero point minimising the weight MSE.

    Args:
        weight: ``[C_out, ...]`` (Linear ``[C_out, C_in]``, conv ``[C_out, C_in, kh, kw]``).
        bits: weight bit-width.
        percentiles: candidate ``eps`` values in percent (each in ``[0, 50)``).

    Returns:
        ``(scale, zero_point)``, each ``[C_out]``.
    """
    check_bits(bits, 'w_bits')
    check_percentiles(percentiles)
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    if not torch.isfinite(rows).all():
        raise ValueError('weight contains NaN or Inf; cannot quantize it')
    return qparams_from_bounds(*search_clipping(rows, bits, percentiles), bits)


class WeightQuantizer(ModeSwitchMixin, nn.Module):
    """Fake-quantizes a weight tensor per output channel.

    Args:
        bits: weight bit-width (2..16).
        out_channels: ``C_out`` of the weight it will quantize.
        percentiles: candidate clipping percentiles (see :func:`search_weight_qparams`).
    """

    def __init__(self, bits: int, out_channels: int,
                 percentiles: Sequence[float] = DEFAULT_PERCENTILES):
        super().__init__()
        self.bits = check_bits(bits, 'w_bits')
        self.percentiles = tuple(percentiles)
        self.register_buffer('scale', torch.ones(out_channels))
        self.register_buffer('zero_point', torch.zeros(out_channels))
        self.register_buffer('calibrated', torch.tensor(False))

    def fit(self, weight: torch.Tensor) -> None:
        """Compute the per-channel parameters from ``weight`` ``[C_out, ...]``."""
        if weight.shape[0] != self.scale.numel():
            raise ValueError(f'weight has {weight.shape[0]} output channels; this quantizer '
                             f'was built for {self.scale.numel()}')
        scale, zero = search_weight_qparams(weight, self.bits, self.percentiles)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero)
        self.calibrated.fill_(True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return ``weight`` (float/calibrate modes) or its fake-quantized copy.

        The copy is made on every call and not kept: keeping every layer's quantized
        weight would hold a second copy of the model's weights, to save a per-channel
        element-wise pass that is small next to the layer's matmul.
        """
        if self.mode not in (QuantMode.QUANTIZED, QuantMode.RECALIBRATE):
            return weight
        if not bool(self.calibrated):
            raise RuntimeError('WeightQuantizer used in quantized mode before calibration: '
                               'run calibration (or load a calibrated state) first')
        shape = (-1,) + (1,) * (weight.dim() - 1)
        return fake_quantize(weight, self.scale.view(shape), self.zero_point.view(shape),
                             self.bits)

    def extra_repr(self) -> str:
        return f'w_bits={self.bits}, per_channel={self.scale.numel()}'

"""Range search over clipping percentiles, by mean squared error (pure functions).

One search serves the weight quantizer (per output channel, :mod:`.weight`) and
RepQ-ViT's activation quantizers (per tensor or per channel, :mod:`.repq`): each
candidate ``eps`` clips a row to its ``[eps, 100 - eps]`` percentiles, and the candidate
with the lowest quantization MSE of the row wins.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .primitives import check_bits, fake_quantize, qparams_from_bounds


def sorted_percentile(sorted_rows: torch.Tensor, percent: float) -> torch.Tensor:
    """Linear-interpolated percentile of each row of an ascending-sorted matrix.

    Args:
        sorted_rows: ``[R, K]`` rows sorted ascending.
        percent: in ``[0, 100]``.

    Returns:
        ``[R]`` percentiles (as ``torch.quantile`` interpolates them).
    """
    position = percent / 100.0 * (sorted_rows.shape[1] - 1)
    low = int(position)
    high = min(low + 1, sorted_rows.shape[1] - 1)
    frac = position - low
    return sorted_rows[:, low] * (1.0 - frac) + sorted_rows[:, high] * frac


def check_percentiles(percentiles: Sequence[float], what: str = 'percentiles'
                      ) -> tuple[float, ...]:
    """Validate clipping candidates ``eps`` (percent, each in ``[0, 50)``)."""
    values = tuple(percentiles)
    if not values or any(isinstance(p, bool) or not isinstance(p, (int, float))
                         or not 0.0 <= p < 50.0 for p in values):
        raise ValueError(f'{what}={values!r}: need at least one value, each in [0, 50)')
    return tuple(float(p) for p in values)


def clipping_candidates(rows: torch.Tensor, bits: int, percentiles: Sequence[float],
                        include_zero: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every candidate clipping range of every row, and its quantization MSE.

    Args:
        rows: ``[R, K]`` values, one quantizer per row (finite).
        bits: bit-width of the uniform asymmetric quantizer.
        percentiles: candidate ``eps`` in percent (``P`` values, each in ``[0, 50)``).
        include_zero: as :func:`~igq_plugin.quant.primitives.qparams_from_bounds`.

    Returns:
        ``(error, lower, upper)``, each ``[P, R]``: the mean squared error of row ``r``
        quantized with the bounds ``[lower, upper]`` of candidate ``p``.
    """
    check_bits(bits)
    percentiles = check_percentiles(percentiles)
    rows = rows.float()
    sorted_rows = rows.sort(dim=1).values
    errors, lowers, uppers = [], [], []
    for percent in percentiles:
        lower = sorted_percentile(sorted_rows, percent)
        upper = sorted_percentile(sorted_rows, 100.0 - percent)
        scale, zero = qparams_from_bounds(lower, upper, bits, include_zero)
        quantized = fake_quantize(rows, scale[:, None], zero[:, None], bits,
                                  integer_zero_point=include_zero)
        errors.append((quantized - rows).pow_(2).mean(1))
        lowers.append(lower)
        uppers.append(upper)
    return torch.stack(errors), torch.stack(lowers), torch.stack(uppers)


def search_clipping(rows: torch.Tensor, bits: int, percentiles: Sequence[float]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``([R], [R])`` bounds of the lowest-MSE candidate of every row."""
    error, lower, upper = clipping_candidates(rows, bits, percentiles)
    best = error.argmin(0, keepdim=True)
    return lower.gather(0, best)[0], upper.gather(0, best)[0]

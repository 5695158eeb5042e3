"""Group bounds that minimise the expected quantization error of the items they receive.

The ``mse`` option of a group's quantization range (docs/method.md, section 3). Between
the two bounds of a fitted grouping, the centres (``mean``: members wider than the
centre are clipped) and the envelopes (``envelope``: no calibrated member is clipped, at
the price of a coarser step), it picks, per group count, the interpolation
``bounds = mean + t * (envelope - mean)`` whose expected squared error over the
calibration items is lowest: rounding plus clipping, with every item sent to the group
the run-time assignment gives it under those bounds.

The widest group keeps its envelope, which spans every calibration range (so G = 1 is
the per-tensor quantizer, as with ``envelope``): with it free, the bounds that are best
for the one calibration image clipped the items of other images, and on held-out images
of the demo detector the error rose above the envelope's (docs/studies.md, "Group bounds").
Under the ``cover`` assignment the narrower groups then clip no calibration item either:
moving their bounds re-partitions the items between step sizes.

The error of an item is computed from a small histogram of its values, taken over its
own range ``[m, M]`` during calibration (:func:`item_histograms`): per bin the count, the
sum and the sum of squares. They give the error of a bin exactly wherever all of its
values map to one code (a bin beyond a bound, or narrower than a step, e.g. the many
values near 0 of a layer whose step is set by outliers); elsewhere the bin's values are
taken as uniform over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..quant.primitives import qmax, qparams_from_bounds

# Bins of an item's histogram over its own range.
HIST_BINS = 16
# Items (channels of an image, or softmax rows) whose histograms a layer keeps; beyond
# it every second item is dropped (memory stays bounded for any calibration set).
MAX_HIST_ITEMS = 1 << 14
# Interpolation steps t between the centre (0) and envelope (1) bounds.
INTERPOLATION_STEPS = tuple(i / 8 for i in range(9))


@dataclass(frozen=True)
class ItemHistograms:
    """Histograms of items over their own ranges.

    Attributes:
        lower: ``[P]`` item minima ``m``.
        upper: ``[P]`` item maxima ``M``.
        count: ``[P, B]`` values per bin.
        total: ``[P, B]`` sum of the values of each bin.
        square: ``[P, B]`` sum of their squares.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    count: torch.Tensor
    total: torch.Tensor
    square: torch.Tensor

    def __len__(self) -> int:
        return self.lower.numel()

    def every(self, step: int) -> 'ItemHistograms':
        """Every ``step``-th item."""
        return ItemHistograms(*(t[::step] for t in (self.lower, self.upper, self.count,
                                                    self.total, self.square)))

    @staticmethod
    def concat(parts: list['ItemHistograms']) -> 'ItemHistograms':
        """The items of every part, in order."""
        return ItemHistograms(*(torch.cat([getattr(p, f) for p in parts]) for f in
                                ('lower', 'upper', 'count', 'total', 'square')))


def item_histograms(values: torch.Tensor, item: torch.Tensor, lower: torch.Tensor,
                    upper: torch.Tensor, bins: int = HIST_BINS) -> ItemHistograms:
    """Histogram every item's values over the item's own range.

    Args:
        values: activation values, any shape.
        item: item index of every value, broadcastable to ``values``, in ``[0, P)``.
        lower: ``[P]`` item minima (the minimum of its values, or lower).
        upper: ``[P]`` item maxima.
        bins: bins per item.

    Returns:
        :class:`ItemHistograms` of the ``P`` items (float64 sums).
    """
    items = lower.numel()
    values = values.double()
    item = item.expand_as(values)
    low, width = lower.double(), (upper.double() - lower.double()).clamp(min=1e-30)
    position = ((values - low[item]) / width[item] * bins).floor_().clamp_(0, bins - 1)
    flat = (item * bins + position.long()).reshape(-1)
    values = values.reshape(-1)
    sums = [torch.zeros(items * bins, dtype=torch.float64, device=values.device)
            for _ in range(3)]
    sums[0].index_add_(0, flat, torch.ones_like(values))
    sums[1].index_add_(0, flat, values)
    sums[2].index_add_(0, flat, values * values)
    return ItemHistograms(lower.double(), upper.double(),
                          *(s.view(items, bins) for s in sums))


def expected_errors(hist: ItemHistograms, lower: torch.Tensor, upper: torch.Tensor,
                    bits: int) -> torch.Tensor:
    """Expected squared quantization error of every item with its own bounds.

    A bin whose values all map to one code (it lies beyond the range and is clipped,
    or is narrower than a step) has the exact error ``sum (x - c)^2 = S2 - 2 c S1 +
    c^2 n``, ``c`` that code's value. Elsewhere the values of a bin are taken as uniform
    over it: the part inside the range contributes the rounding error ``s^2 / 12`` per
    value, the part beyond an end ``(b - u)^2 / 3`` per value (``b`` the bin's far edge).

    Args:
        hist: the items' histograms.
        lower: ``[P]`` lower bound of each item's quantizer.
        upper: ``[P]`` upper bound.
        bits: bit-width.

    Returns:
        ``[P]`` summed squared errors (float64).
    """
    levels = qmax(bits)
    scale, zero = qparams_from_bounds(lower.double(), upper.double(), bits)
    scale, zero = scale[:, None], zero[:, None]
    bins = hist.count.shape[1]
    width = ((hist.upper - hist.lower)[:, None] / bins).clamp(min=1e-30)
    edge = hist.lower[:, None] + width * torch.arange(bins + 1, dtype=torch.float64,
                                                      device=width.device)
    code = torch.clamp(torch.round(edge / scale) + zero, 0, levels)  # [P, B + 1]
    single = code[:, :-1] == code[:, 1:]
    value = (code[:, :-1] - zero) * scale  # the one code's value, where single
    exact = hist.square - 2 * value * hist.total + value * value * hist.count
    low, high = -zero * scale, (levels - zero) * scale
    start, end = edge[:, :-1], edge[:, 1:]
    over = (end - torch.maximum(start, high)).clamp(min=0)  # parts beyond the range
    under = (torch.minimum(end, low) - start).clamp(min=0)
    inside = (width - over - under).clamp(min=0)
    spread = hist.count / width * (inside * scale * scale / 12 + (over ** 3 + under ** 3) / 3)
    return torch.where(single, exact, spread).clamp(min=0).sum(1)


def minimum_error_bounds(hist: ItemHistograms, centre: tuple[torch.Tensor, torch.Tensor],
                         envelope: tuple[torch.Tensor, torch.Tensor], bits: int,
                         assign: Callable[[torch.Tensor, torch.Tensor, torch.Tensor,
                                           torch.Tensor], torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The interpolation of centre and envelope bounds with the lowest expected error;
    the widest group keeps its envelope, which spans every calibration range.

    Args:
        hist: calibration items.
        centre: ``([G], [G])`` the groups' centres (``mean`` bounds).
        envelope: ``([G], [G])`` their envelope bounds.
        bits: bit-width.
        assign: the run-time rule ``assign(m, M, group_lower, group_upper)`` -> ``[P]``
            group of every item under the given bounds.

    Returns:
        ``(lower [G], upper [G], t)``; ties go to the wider bounds (larger ``t``).
    """
    best = None
    widest = int(torch.argmax(envelope[1] - envelope[0]))
    for step in sorted(INTERPOLATION_STEPS, reverse=True):
        lower = centre[0] + step * (envelope[0] - centre[0])
        upper = centre[1] + step * (envelope[1] - centre[1])
        # the widest group keeps spanning every calibration range (see the module doc)
        lower[widest], upper[widest] = envelope[0][widest], envelope[1][widest]
        group = assign(hist.lower.float(), hist.upper.float(), lower, upper)
        error = float(expected_errors(hist, lower[group], upper[group], bits).sum())
        if best is None or error < best[0]:
            best = (error, lower, upper, step)
    return best[1], best[2], best[3]

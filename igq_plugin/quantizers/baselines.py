"""The baselines that run in IGQ's harness (docs/method.md, section 7).

- :class:`PerTensorQuantizer`: one min/max range per layer;
- :class:`StaticGroupQuantizer`: G blocks of consecutive channels, fixed at calibration;
- :class:`UpperBoundQuantizer`: one range per item, computed per instance (the ceiling);
- :class:`FixedRangeQuantizer`: ranges known in advance (image pixels), not calibrated.
"""
from __future__ import annotations

import torch

from ..grouping import check_groups
from ..quant.primitives import fake_quantize_bounds, qparams_from_bounds
from .base import ActivationQuantizer


class _MinMaxStatistics(ActivationQuantizer):
    """Running element-wise min/max statistics (shared by two baselines).

    ``per_item_statistics``: keep one range per channel (only where items keep their
    identity across inputs, :attr:`~igq_plugin.quant.layout.ChannelLayout.fixed_items`).
    """

    per_item_statistics = False

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, name=''):
        super().__init__(bits, channels, kind, channel_dim, name)
        self.per_item = self.per_item_statistics and self.layout.fixed_items
        size = self.channels if self.per_item else 1
        self.register_buffer('running_min', torch.full((size,), float('inf')), persistent=False)
        self.register_buffer('running_max', torch.full((size,), float('-inf')), persistent=False)

    def observe(self, x):
        if self.per_item:
            lower, upper = self.item_ranges(x)
            lower, upper = lower.amin(0), upper.amax(0)
        else:
            lower, upper = torch.aminmax(x)
        torch.minimum(self.running_min, lower.float(), out=self.running_min)
        torch.maximum(self.running_max, upper.float(), out=self.running_max)

    def reset_statistics(self):
        super().reset_statistics()
        self.running_min.fill_(float('inf'))
        self.running_max.fill_(float('-inf'))


class PerTensorQuantizer(_MinMaxStatistics):
    """One quantizer per layer with the min/max over all calibration data."""

    method = 'per-tensor'

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, name=''):
        super().__init__(bits, channels, kind, channel_dim, name)
        self.register_buffer('lower', torch.zeros(()))
        self.register_buffer('upper', torch.zeros(()))

    def compute_parameters(self):
        self.lower.copy_(self.running_min.squeeze())
        self.upper.copy_(self.running_max.squeeze())

    def quantize(self, x):
        return fake_quantize_bounds(x, self.lower, self.upper, self.bits)


class StaticGroupQuantizer(_MinMaxStatistics):
    """G groups of consecutive channels, bounds fixed at calibration.

    Channel ``c`` belongs to group ``c * G // C``. Softmax rows have no fixed
    identity across inputs, so for softmax maps this baseline uses a single static
    range [choice].

    Args:
        groups: G, in ``1..channels``.
    """

    method = 'static-group'
    per_item_statistics = True

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, groups: int = 8,
                 name=''):
        super().__init__(bits, channels, kind, channel_dim, name)
        self.groups = check_groups(groups, self.channels, self._label()) if self.per_item else 1
        size = self.channels if self.per_item else 1
        self.register_buffer('channel_lower', torch.zeros(size))
        self.register_buffer('channel_upper', torch.zeros(size))

    def channel_groups(self) -> torch.Tensor:
        """``[C]`` group index of every channel (consecutive blocks)."""
        size = self.channel_lower.numel()
        return torch.arange(size, device=self.channel_lower.device) * self.groups // size

    def compute_parameters(self):
        index = self.channel_groups()
        group_min = torch.full((self.groups,), float('inf'), device=index.device)
        group_max = torch.full((self.groups,), float('-inf'), device=index.device)
        group_min.scatter_reduce_(0, index, self.running_min, 'amin')
        group_max.scatter_reduce_(0, index, self.running_max, 'amax')
        self.channel_lower.copy_(group_min[index])
        self.channel_upper.copy_(group_max[index])

    def quantize(self, x):
        lower, upper = (self.layout.per_channel(v) for v in (self.channel_lower,
                                                             self.channel_upper))
        return fake_quantize_bounds(x, lower, upper, self.bits)

    @classmethod
    def build(cls, method, bits, *, groups, candidates, distance, bounds, assignment,
              post_norm=False, include_zero=True, **common):
        return cls(bits, groups=groups, **common)

    def bop_groups(self, items):
        return self.groups, False

    def extra_repr(self):
        return super().extra_repr() + f', groups={self.groups}'


class UpperBoundQuantizer(ActivationQuantizer):
    """One quantizer per item, computed per instance: each channel of each image (or
    each softmax row) gets its own min/max. Not deployable; the accuracy ceiling of
    grouping."""

    method = 'upper-bound'

    def bop_groups(self, items):
        return items, True  # every item is its own group, ranged per instance

    def observe(self, x):
        pass

    def compute_parameters(self):
        pass

    def quantize(self, x):
        scale, zero = qparams_from_bounds(*self.item_ranges(x), self.bits)
        return self.layout.fake_quantize(x, scale, zero, self.bits, self.num_instances)


class FixedRangeQuantizer(ActivationQuantizer):
    """Per-channel bounds known in advance, not calibrated (e.g. image pixels).

    The input of the first layer is an image whose range is fixed by its format:
    uint8 pixels normalised by the data preprocessor. Calibrating that range on one
    image clips every brighter or higher-contrast image; with the pixel-domain range
    an 8-bit quantizer clips nothing and errs by at most half a pixel level.
    """

    method = 'fixed-range'

    def __init__(self, bits, channels=None, kind='channel', channel_dim=1, name=''):
        super().__init__(bits, channels, kind, channel_dim, name)
        self.register_buffer('lower', torch.zeros(self.channels))
        self.register_buffer('upper', torch.zeros(self.channels))
        self.register_buffer('range_set', torch.tensor(False))

    def set_range(self, lower: torch.Tensor, upper: torch.Tensor) -> None:
        """Set the per-channel bounds ``[C]`` (e.g. of normalised pixels)."""
        lower, upper = lower.reshape(-1).float(), upper.reshape(-1).float()
        if lower.numel() != self.channels or upper.numel() != self.channels or \
                not bool((upper > lower).all()):
            raise ValueError(f'{self._label()}: need {self.channels} ranges with upper > lower; '
                             f'got lower={lower.tolist()}, upper={upper.tolist()}')
        self.lower.copy_(lower)
        self.upper.copy_(upper)
        self.range_set.fill_(True)

    def observe(self, x):
        pass

    def compute_parameters(self):
        if not bool(self.range_set):
            raise ValueError(f'{self._label()}: the fixed input range was never set '
                             f'(call set_range before calibration)')

    def quantize(self, x):
        return fake_quantize_bounds(x, self.layout.per_channel(self.lower),
                                    self.layout.per_channel(self.upper), self.bits)

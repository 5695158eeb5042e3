"""Activation quantizers: IGQ groups and the baselines, with one interface.

Every quantizer is called like a function on the activation. Its behaviour follows
the mode switch (:mod:`igq_plugin.quant.mode`): in ``CALIBRATE`` mode it records
range statistics of every batch (never the activations themselves), ``finalize()``
turns them into parameters, and in ``QUANTIZED`` mode it fake-quantizes.

Two kinds of item are grouped:

- ``'channel'``: the channels of a Linear/conv input or of Q/K/V. Statistics are
  per instance (image) and channel (:func:`~igq_plugin.grouping.instance_channel_ranges`).
- ``'softmax'``: the rows of a softmax attention map ``[..., N]``; rows are
  non-negative, so every group has ``l_g = 0`` and rows are grouped by their max.

Methods by name: :mod:`.methods` (RepQ-ViT's quantizers are in :mod:`.repq`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..grouping import (assign_covering, assign_groups, check_assignment, check_channel_dim,
                        check_distance, check_groups, cover_order, covering_positions,
                        fit_group_ranges, instance_channel_ranges)
from ..grouping.bounds import (MAX_HIST_ITEMS, ItemHistograms, item_histograms,
                               minimum_error_bounds)
from ..grouping.layout import (instance_param_view, row_param_view, softmax_row_max,
                               split_instances)
from . import compiled, compiled_groups
from .mode import ModeSwitchMixin, QuantMode
from .primitives import check_bits, fake_quantize, fake_quantize_bounds, qparams_from_bounds

# The package's one definition of these constants (the config, the cost model and the
# reports import them from here).
KINDS = ('channel', 'softmax')
GROUP_BOUNDS = ('mean', 'envelope', 'mse')
DEFAULT_CANDIDATES = (1, 2, 4, 8, 12, 16)


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
        kind: ``'channel'`` or ``'softmax'``.
        channel_dim: ``-1`` for tokens-last inputs ``[B', ..., C]``, ``1`` for
            channels-first inputs ``[B, C, H, W]``.

        name: layer name used in error messages and reports.

    Attributes:
        num_instances: images in the current batch. ``None`` treats every leading
            index of the input as its own instance; wrappers of windowed attention set
            it so that the windows of one image form one instance.
        layer_name: name used in error messages and reports (set by model conversion).
        op_cost: cost of the consuming operation, recorded by the layer wrapper in
            ``CALIBRATE`` mode (:meth:`record_cost`); ``None`` until then.
        last_input_shape: shape of the last calibration input (for the cost model).
    """

    method = 'base'

    def __init__(self, bits: int, channels: int | None = None, kind: str = 'channel',
                 channel_dim: int = -1, name: str = ''):
        super().__init__()
        self.layer_name = name
        if kind not in KINDS:
            raise ValueError(f'{name or "activation quantizer"}: kind={kind!r} is not '
                             f'supported: allowed are {KINDS}')
        if kind == 'channel' and (not isinstance(channels, int) or channels < 1):
            raise ValueError(f'{name or "activation quantizer"}: channels={channels!r}: a '
                             f'channel quantizer needs a positive channel count')
        self.bits = check_bits(bits, 'a_bits')
        self.kind = kind
        self.channels = channels if kind == 'channel' else None
        self.channel_dim = check_channel_dim(channel_dim)
        self.num_instances: int | None = None
        self.observed_batches = 0
        self.last_input_shape: tuple[int, ...] | None = None
        self.op_cost: OpCost | None = None
        self.register_buffer('calibrated', torch.tensor(False))

    @classmethod
    def build(cls, method: str, bits: int, *, groups: int, candidates: Sequence[int],
              distance: str, bounds: str, assignment: str, post_norm: bool = False,
              **common) -> 'ActivationQuantizer':
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

    @property
    def item_name(self) -> str:
        """What this quantizer groups, for messages: channels or softmax rows."""
        return 'channels' if self.kind == 'channel' else 'softmax rows'

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
        return self.quantize(x)

    def _label(self) -> str:
        return f'{type(self).__name__}({self.layer_name or self.kind})'

    def _observe_checked(self, x: torch.Tensor) -> None:
        if self.kind == 'channel' and x.shape[self.channel_dim] != self.channels:
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

    def channel_parameters(self, x: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """``(scale, zero, inverse)`` that :meth:`quantize` applies to the channel input
        ``x``, or ``None`` where it has no such form (the default).

        Each is 0-dim, ``[C]`` or ``[I, C]`` (instances of
        :func:`~igq_plugin.grouping.layout.split_instances`); zero points are integers;
        ``inverse`` is ``1 / scale`` or ``None``. Fake-quantizing ``x`` with them gives
        :meth:`quantize`'s result bit for bit, so that callers may quantize several
        operands in one pass (:class:`~igq_plugin.nn.QKVQuantizer`).
        """
        return None

    # -- helpers shared by subclasses -----------------------------------------------------
    def _item_ranges(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-item ranges: ``[I, C]`` for channels, ``[R]`` rows (lower = 0) for softmax."""
        if self.kind == 'channel':
            return instance_channel_ranges(x, self.channel_dim, self.num_instances)
        upper = softmax_row_max(x)
        return torch.zeros_like(upper), upper

    def _fake_quantize_items(self, x: torch.Tensor, scale: torch.Tensor,
                             zero: torch.Tensor, quantizer: str | None = None,
                             inverse: torch.Tensor | None = None) -> torch.Tensor:
        """Fake-quantize with per-item parameters as returned by :meth:`_item_ranges`.

        The zero points must come from :func:`qparams_from_bounds` (integers).

        The parameters (or a 0-dim one shared by every item) are broadcast against a
        view of ``x`` (no copy of ``x``); the result has the shape of ``x``. With
        ``quantizer`` named, its compiled path runs where it applies
        (:func:`compiled.use_compiled`), with the same result; ``inverse`` (``1 / scale``,
        where the caller has it) is used there.
        """
        fast = (quantizer is not None and scale.dim() > 0
                and compiled.use_compiled(quantizer, x, scale, zero))
        if self.kind == 'channel':
            view, _ = split_instances(x, self.channel_dim, self.num_instances)
            if fast:
                return compiled.fake_quantize_instances(view, scale, zero, self.bits,
                                                        self.channel_dim,
                                                        inverse).reshape(x.shape)
            out = fake_quantize(view, *(p if p.dim() == 0 else
                                        instance_param_view(p, view, self.channel_dim)
                                        for p in (scale, zero)), self.bits,
                                integer_zero_point=True)
            return out.reshape(x.shape)
        if fast:
            return compiled.fake_quantize_rows(x, scale, zero, self.bits, inverse)
        return fake_quantize(x, *(p if p.dim() == 0 else row_param_view(p, x)
                                  for p in (scale, zero)), self.bits, integer_zero_point=True)

    def _channel_shape(self) -> tuple[int, ...]:
        """Shape that broadcasts a ``[C]`` vector along the channel dimension."""
        return (-1,) if self.channel_dim == -1 else (-1, 1, 1)

    def extra_repr(self) -> str:
        items = f'channels={self.channels}' if self.kind == 'channel' else 'softmax rows'
        return f'method={self.method}, a_bits={self.bits}, {items}'


class _MinMaxStatistics(ActivationQuantizer):
    """Running element-wise min/max statistics (shared by two baselines)."""

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, name=''):
        super().__init__(bits, channels, kind, channel_dim, name)
        size = self.channels if self.kind == 'channel' and self.per_channel_stats else 1
        self.register_buffer('running_min', torch.full((size,), float('inf')), persistent=False)
        self.register_buffer('running_max', torch.full((size,), float('-inf')), persistent=False)

    per_channel_stats = False

    def observe(self, x):
        if self.kind == 'channel' and self.per_channel_stats:
            lower, upper = instance_channel_ranges(x, self.channel_dim, self.num_instances)
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

    def channel_parameters(self, x):
        return (*qparams_from_bounds(self.lower, self.upper, self.bits), None)

    def quantize(self, x):
        if compiled.use_compiled('per-tensor', x, self.lower, self.upper):
            return compiled.fake_quantize_bounds(x, self.lower, self.upper, self.bits)
        return fake_quantize_bounds(x, self.lower, self.upper, self.bits)


class StaticGroupQuantizer(_MinMaxStatistics):
    """G groups of consecutive channels, bounds fixed at calibration.

    Channel ``c`` belongs to group ``c * G // C``. For softmax maps rows have no fixed
    identity across inputs, so this baseline uses a single static range [choice].

    Args:
        groups: G, in ``1..channels``.
    """

    method = 'static-group'
    per_channel_stats = True

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, groups: int = 8,
                 name=''):
        super().__init__(bits, channels, kind, channel_dim, name)
        self.groups = (check_groups(groups, self.channels, self._label())
                       if self.kind == 'channel' else 1)
        size = self.channels if self.kind == 'channel' else 1
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

    def channel_parameters(self, x):
        if self.kind != 'channel':
            return None
        return (*qparams_from_bounds(self.channel_lower, self.channel_upper, self.bits), None)

    def quantize(self, x):
        shape = self._channel_shape() if self.kind == 'channel' else ()
        lower = self.channel_lower.view(shape) if shape else self.channel_lower.squeeze()
        upper = self.channel_upper.view(shape) if shape else self.channel_upper.squeeze()
        if compiled.use_compiled('static-group', x, lower, upper):
            return compiled.fake_quantize_bounds(x, lower, upper, self.bits)
        return fake_quantize_bounds(x, lower, upper, self.bits)

    @classmethod
    def build(cls, method, bits, *, groups, candidates, distance, bounds, assignment,
              post_norm=False, **common):
        return cls(bits, groups=groups, **common)

    def bop_groups(self, items):
        return self.groups, False

    def extra_repr(self):
        return super().extra_repr() + f', groups={self.groups}'


class _GroupTables(NamedTuple):
    """Per-group run-time parameters of an :class:`IGQQuantizer`'s active G.

    Every field is ``[G]``, except a zero point shared by every group (softmax groups,
    all 0), which is 0-dim. ``sorted_*`` are the same tables in :func:`cover_order`;
    ``cover`` holds them as :mod:`.compiled_groups` takes them (``None`` for one group,
    or where its graphs do not apply).
    """

    scale: torch.Tensor
    zero: torch.Tensor
    centre_lower: torch.Tensor
    centre_upper: torch.Tensor
    order: torch.Tensor
    sorted_lower: torch.Tensor
    sorted_upper: torch.Tensor
    sorted_scale: torch.Tensor
    sorted_zero: torch.Tensor
    cover: compiled_groups.CoverTables | None  # the compiled graphs' tables (G >= 2)


def _shared_or_all(values: torch.Tensor) -> torch.Tensor:
    """``values[0]`` (0-dim) when every entry equals it, else ``values``."""
    return values[0] if bool((values == values[0]).all()) else values


class IGQQuantizer(ActivationQuantizer):
    """Instance-aware group quantizer (docs/method.md, sections 3 and 4).

    At run time every item (channel of one instance, or softmax row) is assigned to
    one of G calibrated groups from its own range on this instance (``assignment``),
    and quantized with that group's scale and zero point. Parameters are calibrated for every
    candidate group count, so the group-size allocation can switch ``groups`` without
    calibrating again.

    Args:
        groups: active G (must be one of the usable candidates).
        candidates: group counts calibrated; counts above ``channels`` are dropped.
        distance: ``'l2'`` or ``'l1'`` range distance (calibration, and the
            ``'nearest'`` assignment).
        max_iter: alternating calibration rounds.
        bounds: quantization range of a group [choice]: ``'envelope'`` (the
            min/max over the calibration ranges of its members, so no calibrated
            channel is clipped and G=1 is the per-tensor min/max quantizer),
            ``'mean'`` (the group's centre, the mean of its members' ranges, the
            wording of docs/method.md; it clips every member wider than the mean, and at
            G=1 clips all outlier channels) or ``'mse'`` (per group count, the
            interpolation between the two with the lowest expected rounding plus
            clipping error of the calibration items under the run-time assignment,
            :mod:`igq_plugin.grouping.bounds`). See README, "Group bounds".
        assignment: run-time rule [choice]: ``'cover'`` (default: the narrowest group
            whose quantization range contains the item's range on this instance, else
            the one that clips least; see :func:`~igq_plugin.grouping.assign_covering`)
            or ``'nearest'`` (the group whose centre is nearest by ``distance``, the
            wording of docs/method.md, which clips every item wider than the range of its
            nearest group). See README, "Group assignment", for the measurements.
    """

    method = 'igq'

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, groups: int = 8,
                 candidates: Sequence[int] = DEFAULT_CANDIDATES, distance: str = 'l2',
                 max_iter: int = 20, bounds: str = 'envelope', assignment: str = 'cover',
                 name: str = ''):
        super().__init__(bits, channels, kind, channel_dim, name)
        self.assignment = check_assignment(assignment)
        if bounds not in GROUP_BOUNDS:
            raise ValueError(f'{self._label()}: bounds={bounds!r} is not supported: allowed '
                             f'are {GROUP_BOUNDS}')
        self.bounds = bounds
        for g in candidates:
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ValueError(f'{self._label()}: candidates={tuple(candidates)!r}: every '
                                 f'candidate must be a positive integer')
        # Channels bound G; softmax rows are counted only at run time (thousands per map).
        limit = self.channels if self.kind == 'channel' else max(max(candidates), groups)
        check_groups(groups, limit, self._label(), self.item_name)
        usable = sorted({g for g in candidates if g <= limit})
        if groups not in usable:
            if groups != limit:
                raise ValueError(f'{self._label()}: groups={groups} is not one of the '
                                 f'candidates {tuple(sorted(candidates))}; add it to the '
                                 f'candidates or choose one of them')
            # G capped at the layer's channel count (e.g. the 3 channels of an image)
            usable.append(groups)
        self.distance = check_distance(distance)
        self.max_iter = int(max_iter)
        self.register_buffer('candidate_groups', torch.tensor(usable, dtype=torch.long))
        self.register_buffer('groups', torch.tensor(groups, dtype=torch.long))
        self.register_buffer('group_lower', torch.zeros(len(usable), max(usable)))
        self.register_buffer('group_upper', torch.zeros(len(usable), max(usable)))
        self.register_buffer('centre_lower', torch.zeros(len(usable), max(usable)))
        self.register_buffer('centre_upper', torch.zeros(len(usable), max(usable)))
        self._pairs_lower: list[torch.Tensor] = []
        self._pairs_upper: list[torch.Tensor] = []
        self._histograms: ItemHistograms | None = None  # bounds='mse' only
        self.fit_iterations: dict[int, int] = {}
        self.bound_steps: dict[int, float] = {}  # bounds='mse': the chosen interpolation
        self._tables_key: tuple | None = None
        self._tables: _GroupTables | None = None

    @property
    def candidates(self) -> tuple[int, ...]:
        """Group counts with calibrated parameters."""
        return tuple(self.candidate_groups.tolist())

    def set_groups(self, groups: int) -> None:
        """Select the active group count (one of :attr:`candidates`)."""
        if groups not in self.candidates:
            raise ValueError(f'{self._label()}: groups={groups!r} was not calibrated: '
                             f'allowed are {self.candidates}')
        self.groups.fill_(groups)

    def observe(self, x):
        lower, upper = self._item_ranges(x)
        self._pairs_lower.append(lower.reshape(-1).float().cpu())
        self._pairs_upper.append(upper.reshape(-1).float().cpu())
        if self.bounds == 'mse':
            self._observe_histograms(x, lower.reshape(-1), upper.reshape(-1))

    def _observe_histograms(self, x: torch.Tensor, lower: torch.Tensor,
                            upper: torch.Tensor) -> None:
        """Add the histograms of this batch's items (at most ``MAX_HIST_ITEMS`` kept)."""
        if self.kind == 'channel':
            view, _ = split_instances(x, self.channel_dim, self.num_instances)
            instances, channels = lower.numel() // self.channels, self.channels
            item = torch.arange(instances * channels, device=x.device).view(instances,
                                                                             channels)
            item = instance_param_view(item, view, self.channel_dim)
            part = item_histograms(view, item, lower, upper)
        else:
            rows = x.reshape(-1, x.shape[-1])
            step = -(-rows.shape[0] // MAX_HIST_ITEMS)  # rows of a map, evenly spaced
            rows, upper = rows[::step], upper[::step]
            item = torch.arange(rows.shape[0], device=x.device).view(-1, 1)
            part = item_histograms(rows, item, torch.zeros_like(upper), upper)
        part = ItemHistograms(*(t.cpu() for t in (part.lower, part.upper, part.count,
                                                  part.total, part.square)))
        kept = part if self._histograms is None else ItemHistograms.concat(
            [self._histograms, part])
        while len(kept) > MAX_HIST_ITEMS:
            kept = kept.every(2)
        self._histograms = kept

    def reset_statistics(self):
        super().reset_statistics()
        self._pairs_lower, self._pairs_upper = [], []
        self._histograms = None

    def pooled_ranges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All recorded item ranges ``([P], [P])`` in observation order."""
        return torch.cat(self._pairs_lower), torch.cat(self._pairs_upper)

    @classmethod
    def build(cls, method, bits, *, groups, candidates, distance, bounds, assignment,
              post_norm=False, **common):
        quantizer = cls(bits, groups=groups, candidates=candidates, distance=distance,
                        bounds=bounds, assignment=assignment, **common)
        quantizer.method = method  # 'igq' (allocated) or 'igq-fixed'
        return quantizer

    def bop_groups(self, items):
        return int(self.groups), True

    def compute_parameters(self):
        lower, upper = self.pooled_ranges()
        if lower.numel() < max(self.candidates):
            raise ValueError(f'{self._label()}: calibration gave {lower.numel()} '
                             f'{self.item_name} ranges, fewer than the largest candidate '
                             f'G={max(self.candidates)}; calibrate on more images or lower '
                             f'the candidates')
        for buffer in (self.group_lower, self.group_upper, self.centre_lower, self.centre_upper):
            buffer.zero_()
        for row, groups in enumerate(self.candidates):
            fit = fit_group_ranges(lower, upper, groups, self.max_iter, self.distance)
            self.centre_lower[row, :groups] = fit.lower
            self.centre_upper[row, :groups] = fit.upper
            if self.bounds == 'mean':
                bound_lower, bound_upper = fit.lower, fit.upper
            elif self.bounds == 'envelope':
                bound_lower, bound_upper = fit.envelope(lower, upper)
            else:
                bound_lower, bound_upper, step = minimum_error_bounds(
                    self._histograms, (fit.lower, fit.upper), fit.envelope(lower, upper),
                    self.bits, self._assign_ranges(fit.lower, fit.upper))
                self.bound_steps[groups] = step
            self.group_lower[row, :groups] = bound_lower
            self.group_upper[row, :groups] = bound_upper
            self.fit_iterations[groups] = fit.iterations

    def _assign_ranges(self, centre_lower: torch.Tensor, centre_upper: torch.Tensor):
        """The run-time rule as ``assign(m, M, group_lower, group_upper)`` -> groups."""
        if self.assignment == 'cover':
            return assign_covering
        return lambda lower, upper, _l, _u: assign_groups(lower, upper, centre_lower,
                                                          centre_upper, self.distance)

    def _active_row(self) -> tuple[int, int]:
        groups = int(self.groups)
        return self.candidates.index(groups), groups

    def active_ranges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([G], [G])`` quantization bounds of the active group count."""
        row, groups = self._active_row()
        return self.group_lower[row, :groups], self.group_upper[row, :groups]

    def active_centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([G], [G])`` assignment centres of the active group count."""
        row, groups = self._active_row()
        return self.centre_lower[row, :groups], self.centre_upper[row, :groups]

    def _active_tables(self) -> _GroupTables:
        """Run-time tables of the active group count (see :class:`_GroupTables`).

        Recomputed only when a buffer or ``bits`` changes (in place, e.g.
        ``set_groups`` or ``load_state_dict``, or by replacement).
        """
        key = (self.bits,) + tuple((id(b), b.data_ptr(), b._version) for b in (
            self.groups, self.candidate_groups, self.group_lower, self.group_upper,
            self.centre_lower, self.centre_upper))
        if key != self._tables_key:
            lower, upper = self.active_ranges()
            scale, zero = qparams_from_bounds(lower, upper, self.bits)
            order = cover_order(lower, upper)
            sorted_tables = lower[order], upper[order], scale[order], _shared_or_all(zero[order])
            cover = (compiled_groups.prepare_cover(self.kind, *sorted_tables)
                     if order.numel() > 1 else None)
            self._tables_key, self._tables = key, _GroupTables(
                scale, _shared_or_all(zero), *self.active_centres(), order, *sorted_tables,
                cover)
        return self._tables

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Group index of every item of ``x``: ``[I, C]`` (channels) or ``[R]`` (rows)."""
        tables = self._active_tables()
        if self.assignment == 'cover':
            return tables.order[self._covering_positions(x, tables)]
        lower, upper = self._item_ranges(x)
        return assign_groups(lower, upper, tables.centre_lower, tables.centre_upper,
                             self.distance)

    def _covering_positions(self, x: torch.Tensor, tables: _GroupTables) -> torch.Tensor:
        """Positions in the cover order of every item's group (``'cover'`` rule)."""
        if self.kind == 'softmax':  # every row minimum is 0: no zero tensor to build
            return covering_positions(None, softmax_row_max(x), tables.sorted_lower,
                                      tables.sorted_upper)
        return covering_positions(*self._item_ranges(x), tables.sorted_lower,
                                  tables.sorted_upper)

    def item_parameters(self, x: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(scale, zero, inverse)`` of every item of ``x`` on this instance.

        Returns:
            ``[I, C]`` (channels) or ``[R]`` (rows) scales and zero points (a zero point
            shared by every group stays 0-dim); both 0-dim with one group under the
            ``'cover'`` rule (a per-tensor quantizer); ``inverse`` is ``1 / scale`` where
            the compiled graphs of :mod:`.compiled_groups` gave it, else ``None``.
        """
        tables = self._active_tables()
        if self.assignment == 'cover':
            if tables.sorted_upper.numel() == 1:
                return tables.sorted_scale[0], tables.sorted_zero.reshape(-1)[0], None
            if tables.cover is not None and compiled.use_compiled('igq', x, tables.sorted_scale):
                view = (split_instances(x, self.channel_dim, self.num_instances)[0]
                        if self.kind == 'channel' else x)
                params = compiled_groups.cover_parameters(view.detach(), self.kind,
                                                          self.channel_dim, tables.cover)
                if params is not None:
                    scale, inverse, zero = params
                    return scale, zero, inverse
            # gather straight from the tables in cover order
            index = self._covering_positions(x, tables)
            scale, zero = tables.sorted_scale, tables.sorted_zero
        else:
            index = self.assign(x)
            scale, zero = tables.scale, tables.zero
        flat = index.reshape(-1)  # index_select: a fast gather, unlike advanced indexing
        scale = scale.index_select(0, flat).view(index.shape)
        if zero.dim():
            zero = zero.index_select(0, flat).view(index.shape)
        return scale, zero, None

    def channel_parameters(self, x):
        return self.item_parameters(x) if self.kind == 'channel' else None

    def quantize(self, x):
        scale, zero, inverse = self.item_parameters(x)
        if scale.dim() == 0:  # one group
            if compiled.use_compiled('igq', x, scale, zero):
                return compiled.fake_quantize_tensor(x, scale, zero, self.bits)
            return fake_quantize(x, scale, zero, self.bits, integer_zero_point=True)
        return self._fake_quantize_items(x, scale, zero, 'igq', inverse)

    def extra_repr(self):
        return (super().extra_repr() + f', groups={int(self.groups)}, '
                f'candidates={self.candidates}, distance={self.distance}, bounds={self.bounds}, '
                f'assignment={self.assignment}')


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

    def channel_parameters(self, x):
        if self.kind != 'channel':
            return None
        return (*qparams_from_bounds(*self._item_ranges(x), self.bits), None)

    def quantize(self, x):
        lower, upper = self._item_ranges(x)
        scale, zero = qparams_from_bounds(lower, upper, self.bits)
        return self._fake_quantize_items(x, scale, zero, 'upper-bound')


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
        shape = self._channel_shape()
        return fake_quantize_bounds(x, self.lower.view(shape), self.upper.view(shape), self.bits)

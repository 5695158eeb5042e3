"""The instance-aware group quantizer (docs/method.md, sections 3 and 4)."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from ..grouping import (assign_covering, assign_groups, check_assignment, check_distance,
                        check_groups, cover_order, covering_positions, fit_group_ranges)
from ..grouping.bounds import (MAX_HIST_ITEMS, ItemHistograms, item_histograms,
                               minimum_error_bounds)
from ..quant.primitives import fake_quantize, qparams_from_bounds
from .base import DEFAULT_CANDIDATES, GROUP_BOUNDS, ActivationQuantizer


class GroupTables(NamedTuple):
    """Run-time parameters of an :class:`IGQQuantizer`'s active G.

    Every field is ``[G]``, except a zero point shared by every group (softmax groups,
    all 0), which is 0-dim. ``sorted_*`` are the same tables in :func:`cover_order`.
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


def _shared_or_all(values: torch.Tensor) -> torch.Tensor:
    """``values[0]`` (0-dim) when every entry equals it, else ``values``."""
    return values[0] if bool((values == values[0]).all()) else values


class IGQQuantizer(ActivationQuantizer):
    """Instance-aware group quantizer.

    At run time every item (channel of one instance, or softmax row) is assigned to
    one of G calibrated groups from its own range on this instance (``assignment``),
    and quantized with that group's scale and zero point. Parameters are calibrated for
    every candidate group count, so the group-size allocation can switch ``groups``
    without calibrating again.

    Args:
        groups: active G (must be one of the usable candidates).
        candidates: group counts calibrated; counts above ``channels`` are dropped.
        distance: ``'l2'`` or ``'l1'`` range distance (calibration, and the
            ``'nearest'`` assignment).
        max_iter: alternating calibration rounds.
        bounds: quantization range of a group [choice]: ``'envelope'`` (the
            min/max over the calibration ranges of its members, so no calibrated
            channel is clipped and G=1 is the per-tensor min/max quantizer),
            ``'mean'`` (the group's centre, the mean of its members' ranges; it clips
            every member wider than the mean, and at G=1 clips all outlier channels) or
            ``'mse'`` (per group count, the interpolation between the two with the
            lowest expected rounding plus clipping error of the calibration items under
            the run-time assignment, :mod:`igq_plugin.grouping.bounds`).
        assignment: run-time rule [choice]: ``'cover'`` (default: the narrowest group
            whose quantization range contains the item's range on this instance, else
            the one that clips least; see :func:`~igq_plugin.grouping.assign_covering`)
            or ``'nearest'`` (the group whose centre is nearest by ``distance``, the
            paper's wording, which clips every item wider than the range of its nearest
            group). docs/studies.md has the measurements behind both defaults.
        post_norm: (``method='igq-reparam'`` only) the input of a Linear that follows a
            LayerNorm: calibration also computes a static per-channel fold
            (:func:`static_fold`, RepQ-ViT's reparameterization) and fits the groups to
            the folded ranges; :func:`igq_plugin.nn.reparam.apply_folds` then moves the
            fold into the LayerNorm and the Linear. Not with ``bounds='mse'`` (its
            histograms are of the unfolded values).

    Buffers (``post_norm`` only):
        fold_ratio, fold_shift: ``[C]`` the fold ``x' = x / r - b``.
        folded: whether the fold was applied to the weights.
    """

    method = 'igq'

    def __init__(self, bits, channels=None, kind='channel', channel_dim=-1, groups: int = 8,
                 candidates: Sequence[int] = DEFAULT_CANDIDATES, distance: str = 'l2',
                 max_iter: int = 20, bounds: str = 'envelope', assignment: str = 'cover',
                 name: str = '', post_norm: bool = False):
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
        limit = self.channels if self.layout.fixed_items else max(max(candidates), groups)
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
        self.post_norm = bool(post_norm)
        if self.post_norm:
            if self.kind != 'channel' or bounds == 'mse':
                raise ValueError(f"{self._label()}: post_norm (the fold of igq-reparam) needs "
                                 f"kind='channel' and bounds 'envelope' or 'mean'; got "
                                 f"kind={self.kind!r}, bounds={bounds!r}")
            self.register_buffer('fold_ratio', torch.ones(self.channels))
            self.register_buffer('fold_shift', torch.zeros(self.channels))
            self.register_buffer('folded', torch.tensor(False))

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

    @classmethod
    def build(cls, method, bits, *, groups, candidates, distance, bounds, assignment,
              post_norm=False, include_zero=True, **common):
        quantizer = cls(bits, groups=groups, candidates=candidates, distance=distance,
                        bounds=bounds, assignment=assignment,
                        post_norm=post_norm and method == 'igq-reparam', **common)
        quantizer.method = method  # 'igq' / 'igq-reparam' (allocated) or 'igq-fixed'
        return quantizer

    def bop_groups(self, items):
        return int(self.groups), True

    # -- calibration -----------------------------------------------------------------
    def observe(self, x):
        x = self.unfolded(x)
        lower, upper = self.item_ranges(x)
        lower, upper = lower.reshape(-1), upper.reshape(-1)
        self._pairs_lower.append(lower.float().cpu())
        self._pairs_upper.append(upper.float().cpu())
        if self.bounds == 'mse':
            self._observe_histograms(x, lower, upper)

    def _observe_histograms(self, x: torch.Tensor, lower: torch.Tensor,
                            upper: torch.Tensor) -> None:
        """Add the histograms of this batch's items (at most ``MAX_HIST_ITEMS`` kept)."""
        part = item_histograms(*self.layout.histogram_items(x, self.num_instances, lower,
                                                             upper, MAX_HIST_ITEMS))
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

    def compute_parameters(self):
        lower, upper = self.pooled_ranges()
        if lower.numel() < max(self.candidates):
            raise ValueError(f'{self._label()}: calibration gave {lower.numel()} '
                             f'{self.item_name} ranges, fewer than the largest candidate '
                             f'G={max(self.candidates)}; calibrate on more images or lower '
                             f'the candidates')
        for buffer in (self.group_lower, self.group_upper, self.centre_lower, self.centre_upper):
            buffer.zero_()
        if self.post_norm:  # the groups quantize the folded input
            ratio, shift = static_fold(lower.view(-1, self.channels),
                                       upper.view(-1, self.channels))
            self.fold_ratio.copy_(ratio)
            self.fold_shift.copy_(shift)
            self.folded.fill_(False)
            lower = (lower.view(-1, self.channels) / ratio - shift).reshape(-1)
            upper = (upper.view(-1, self.channels) / ratio - shift).reshape(-1)
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

    def fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mark the calibrated fold as applied; ``(r, b)``, each ``[C]`` (the caller,
        :func:`~igq_plugin.nn.reparam.apply_folds`, rescales the LayerNorm and Linear)."""
        if not self.post_norm or not bool(self.calibrated):
            raise RuntimeError(f'{self._label()}: only a calibrated post_norm quantizer '
                               f'can be folded')
        self.folded.fill_(True)
        return self.fold_factors()

    def fold_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, b)`` of the fold recorded in the buffers: ``x' = x / r - b``."""
        return self.fold_ratio, self.fold_shift

    def _assign_ranges(self, centre_lower: torch.Tensor, centre_upper: torch.Tensor):
        """The run-time rule as ``assign(m, M, group_lower, group_upper)`` -> groups."""
        if self.assignment == 'cover':
            return assign_covering
        return lambda lower, upper, _l, _u: assign_groups(lower, upper, centre_lower,
                                                          centre_upper, self.distance)

    # -- run time --------------------------------------------------------------------
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

    def group_tables(self) -> GroupTables:
        """Run-time tables of the active group count, from the buffers.

        Built on every call (a few operations on G values, small next to one pass over
        the activation), so they always follow the buffers: ``set_groups``,
        ``load_state_dict`` and ``.to()`` need no invalidation.
        """
        lower, upper = self.active_ranges()
        scale, zero = qparams_from_bounds(lower, upper, self.bits)
        order = cover_order(lower, upper)
        return GroupTables(scale, _shared_or_all(zero), *self.active_centres(), order,
                           lower[order], upper[order], scale[order],
                           _shared_or_all(zero[order]))

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Group index of every item of ``x``: ``[I, C]`` (channels) or ``[R]`` (rows)."""
        return self._assign(x, self.group_tables())

    def _assign(self, x: torch.Tensor, tables: GroupTables) -> torch.Tensor:
        if self.assignment == 'cover':
            return tables.order[self._covering_positions(x, tables)]
        lower, upper = self.item_ranges(x)
        return assign_groups(lower, upper, tables.centre_lower, tables.centre_upper,
                             self.distance)

    def _covering_positions(self, x: torch.Tensor, tables: GroupTables) -> torch.Tensor:
        """Positions in the cover order of every item's group (``'cover'`` rule)."""
        lower, upper = self.layout.ranges_or_upper_only(x, self.num_instances)
        return covering_positions(lower, upper, tables.sorted_lower, tables.sorted_upper)

    def item_parameters(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` of every item of ``x`` on this instance.

        Returns:
            ``[I, C]`` (channels) or ``[R]`` (rows) scales and zero points (a zero point
            shared by every group stays 0-dim); both 0-dim with one group under the
            ``'cover'`` rule (a per-tensor quantizer).
        """
        tables = self.group_tables()
        if self.assignment == 'cover':
            if tables.sorted_upper.numel() == 1:
                return tables.sorted_scale[0], tables.sorted_zero.reshape(-1)[0]
            index = self._covering_positions(x, tables)
            scale, zero = tables.sorted_scale, tables.sorted_zero
        else:
            index = self._assign(x, tables)  # the tables just built, not a second copy
            scale, zero = tables.scale, tables.zero
        flat = index.reshape(-1)  # index_select: a fast gather, unlike advanced indexing
        scale = scale.index_select(0, flat).view(index.shape)
        if zero.dim():
            zero = zero.index_select(0, flat).view(index.shape)
        return scale, zero

    def quantize(self, x):
        scale, zero = self.item_parameters(x)
        if scale.dim() == 0:  # one group
            return fake_quantize(x, scale, zero, self.bits, integer_zero_point=True)
        return self.layout.fake_quantize(x, scale, zero, self.bits, self.num_instances)

    def extra_repr(self):
        return (super().extra_repr() + f', groups={int(self.groups)}, '
                f'candidates={self.candidates}, distance={self.distance}, bounds={self.bounds}, '
                f'assignment={self.assignment}' + (', post_norm=True' if self.post_norm else ''))


def static_fold(lower: torch.Tensor, upper: torch.Tensor,
                floor: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """RepQ-ViT's reparameterization for IGQ: the fold that gives every channel the same
    typical range, so that the groups are left with the per-instance part of the spread.

    A channel's typical range ``[lo_c, hi_c]`` is the mean over the calibration instances
    of its lower and upper ends; the fold ``x' = x / r - b`` with ``r_c = w_c / mean(w)``
    (``w_c = hi_c - lo_c``) and ``b_c = lo_c / r_c - mean(lo / r)`` maps every channel's
    typical range onto one ``[L, L + mean(w)]`` (RepQ-ViT does the same with per-channel
    quantizer scales and zero points).

    Args:
        lower, upper: ``[N, C]`` every calibration instance's channel ranges.
        floor: widths below ``floor * mean(w)`` (constant channels) count as that, so
            that ``r`` stays positive and the LayerNorm's rescaled affine finite.

    Returns:
        ``(r, b)``, each ``[C]``.
    """
    low, high = lower.mean(0), upper.mean(0)
    width = high - low
    mean_width = width.mean().clamp_min(torch.finfo(width.dtype).tiny)
    ratio = width.clamp_min(floor * mean_width) / mean_width
    folded_low = low / ratio
    return ratio, folded_low - folded_low.mean()

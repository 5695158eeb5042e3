"""Alternating calibration of the G group ranges (docs/method.md, section 3).

Pool the ``(m, M)`` range pairs of every (calibration image, channel), initialise
the G centres from quantiles of the range ``M - m``, then repeat: assign every pair
to its nearest centre; set ``(l_g, u_g)`` to the mean of the assigned pairs, until
no assignment changes or ``max_iter`` iterations. An empty group is re-seeded from
the pair that lies farthest from its own centre.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .assign import check_distance, range_distances


@dataclass(frozen=True)
class GroupFit:
    """Result of :func:`fit_group_ranges`.

    Attributes:
        lower: ``[G]`` group centres ``l_g`` (mean of the assigned minima).
        upper: ``[G]`` group centres ``u_g`` (mean of the assigned maxima).
        assignment: ``[P]`` final group of every pooled pair.
        iterations: assignment/update rounds run.
        converged: whether the last round changed no assignment.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    assignment: torch.Tensor
    iterations: int
    converged: bool

    def envelope(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([G], [G])``: min of the assigned minima and max of the assigned maxima; the
        widest group spans every calibration range.

        No calibrated item is clipped by its group, and an item of a new instance that
        no group contains still finds the widest group as wide as the per-tensor
        quantizer's range (with G = 1 it is that quantizer). Without the widest group's
        extension the groups together covered less than the per-tensor range, and on
        held-out images IGQ's error at 6 bits stayed above per-tensor's (docs/studies.md,
        "Group assignment").

        Args:
            lower: the ``[P]`` minima the fit was computed on.
            upper: the ``[P]`` maxima the fit was computed on.
        """
        groups = self.lower.numel()
        env_lower = torch.full((groups,), float('inf'), dtype=lower.dtype)
        env_upper = torch.full((groups,), float('-inf'), dtype=upper.dtype)
        env_lower.scatter_reduce_(0, self.assignment, lower.reshape(-1), 'amin')
        env_upper.scatter_reduce_(0, self.assignment, upper.reshape(-1), 'amax')
        widest = int(torch.argmax(env_upper - env_lower))
        env_lower[widest], env_upper[widest] = lower.min(), upper.max()
        return env_lower, env_upper


def check_groups(groups: int, items: int, layer: str = 'layer',
                 item_name: str = 'channels') -> int:
    """Validate a group count against the number of items (channels or rows).

    Args:
        groups: G.
        items: how many items the layer has.
        layer: the layer's name, for the message.
        item_name: what the items are (``'channels'``, ``'softmax rows'``, ``'range pairs'``).
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= items:
        raise ValueError(f'{layer}: groups={groups!r} is not allowed for {items} '
                         f'{item_name}: allowed are integers 1..{items}')
    return groups


def _initial_centres(lower: torch.Tensor, upper: torch.Tensor,
                     groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres = means of G equal-count slices of the pairs sorted by range."""
    order = torch.argsort(upper - lower, stable=True)
    slice_of = torch.empty_like(order)
    slice_of[order] = torch.arange(order.numel(), device=order.device) * groups // order.numel()
    return _group_means(lower, upper, slice_of, groups)


def _group_means(lower, upper, assignment, groups):
    counts = torch.bincount(assignment, minlength=groups).to(lower.dtype)
    sums_lower = torch.zeros(groups, dtype=lower.dtype, device=lower.device)
    sums_upper = torch.zeros_like(sums_lower)
    sums_lower.index_add_(0, assignment, lower)
    sums_upper.index_add_(0, assignment, upper)
    safe = counts.clamp(min=1)
    return sums_lower / safe, sums_upper / safe


def fit_group_ranges(lower: torch.Tensor, upper: torch.Tensor, groups: int,
                     max_iter: int = 20, distance: str = 'l2') -> GroupFit:
    """Calibrate G group ranges on pooled item ranges.

    Args:
        lower: ``[P]`` item minima (all zeros for softmax rows).
        upper: ``[P]`` item maxima.
        groups: G, in ``1..P``.
        max_iter: maximum assignment/update rounds.
        distance: ``'l2'`` or ``'l1'`` (see :func:`range_distances`).

    Returns:
        A :class:`GroupFit`. Deterministic for given inputs.

    Raises:
        ValueError: no pairs, non-finite pairs, or ``groups`` outside ``1..P``.
    """
    check_distance(distance)
    lower = lower.reshape(-1).double()
    upper = upper.reshape(-1).double()
    if lower.numel() == 0:
        raise ValueError('no calibration statistics: the calibration set produced 0 '
                         'range pairs; calibrate on at least one image')
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
        raise ValueError('calibration ranges contain NaN or Inf')
    check_groups(groups, lower.numel(), 'fit_group_ranges', 'range pairs')
    if groups == 1:
        assignment = torch.zeros(lower.numel(), dtype=torch.long, device=lower.device)
        group_lower, group_upper = _group_means(lower, upper, assignment, 1)
        return GroupFit(group_lower.float(), group_upper.float(), assignment, 1, True)

    group_lower, group_upper = _initial_centres(lower, upper, groups)
    assignment = None
    converged = False
    iterations = 0
    for iterations in range(1, max_iter + 1):
        dist = range_distances(lower, upper, group_lower, group_upper, distance)
        new_assignment = dist.argmin(dim=-1)
        new_assignment = _reseed_empty(new_assignment, dist, groups)
        if assignment is not None and torch.equal(new_assignment, assignment):
            converged = True
            break
        assignment = new_assignment
        group_lower, group_upper = _group_means(lower, upper, assignment, groups)
    return GroupFit(group_lower.float(), group_upper.float(), assignment, iterations, converged)


def _reseed_empty(assignment: torch.Tensor, dist: torch.Tensor, groups: int) -> torch.Tensor:
    """Move the pair farthest from its own centre into each empty group."""
    counts = torch.bincount(assignment, minlength=groups)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return assignment
    assignment = assignment.clone()
    own = dist.gather(1, assignment.unsqueeze(1)).squeeze(1)
    for group in empty:  # rare: at most G - 1 iterations
        counts = torch.bincount(assignment, minlength=groups)
        movable = counts[assignment] > 1
        if not movable.any():
            break
        candidate = torch.where(movable, own, torch.full_like(own, -1.0)).argmax()
        assignment[candidate] = group
        own[candidate] = -1.0
    return assignment

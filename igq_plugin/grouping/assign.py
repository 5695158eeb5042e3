"""Assignment of items (channels or softmax rows) to the nearest group range."""
from __future__ import annotations

import torch

DISTANCES = ('l2', 'l1')
# How an item picks its group at run time [choice]: the group whose centre is nearest,
# or the narrowest group whose quantization range covers the item's range.
ASSIGNMENTS = ('cover', 'nearest')
# Up to this many (item, group) pairs the [*S, G] distance table is the cheapest way.
_TABLE_PAIRS = 1 << 15
# Items per block above that: [G, block] temporaries stay small and in cache.
_CPU_BLOCK = 1 << 15
_DEVICE_BLOCK = 1 << 20


def check_distance(distance: str) -> str:
    """Validate the distance name (``'l2'`` or ``'l1'``)."""
    if distance not in DISTANCES:
        raise ValueError(f'distance={distance!r} is not supported: allowed are {DISTANCES}')
    return distance


def check_assignment(assignment: str) -> str:
    """Validate the assignment rule name (``'cover'`` or ``'nearest'``)."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f'assignment={assignment!r} is not supported: allowed are '
                         f'{ASSIGNMENTS}')
    return assignment


def cover_order(group_lower: torch.Tensor, group_upper: torch.Tensor) -> torch.Tensor:
    """Groups from the narrowest range to the widest (ties: lower index first): ``[G]``."""
    return torch.sort(group_upper - group_lower, stable=True).indices


def assign_covering(lower: torch.Tensor, upper: torch.Tensor, group_lower: torch.Tensor,
                    group_upper: torch.Tensor, order: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """The narrowest group whose range ``[l_g, u_g]`` contains the item's ``[m, M]``.

    Where no group contains it, the group that clips the least,
    ``argmin_g (M - u_g)^+ + (l_g - m)^+``, the narrowest of equals. An item is never
    clipped more than the widest groups force, and keeps the finest scale that does
    not clip it. Items with NaN ranges go to the narrowest group.

    Args:
        lower: item minima, ``[*S]``.
        upper: item maxima, ``[*S]``.
        group_lower: group quantization bounds ``l_g``, ``[G]``.
        group_upper: ``u_g``, ``[G]``.
        order: :func:`cover_order` of the groups (computed when omitted).

    Returns:
        ``[*S]`` int64 group indices.

    Example:
        >>> assign_covering(torch.tensor([-1., -1., -9.]), torch.tensor([1., 3., 1.]),
        ...                 torch.tensor([-2., -4.]), torch.tensor([2., 4.]))
        tensor([0, 1, 1])
    """
    if order is None:
        order = cover_order(group_lower, group_upper)
    position = covering_positions(lower, upper, group_lower[order], group_upper[order])
    return order.index_select(0, position.reshape(-1)).view(position.shape)


def covering_positions(lower: torch.Tensor | None, upper: torch.Tensor,
                       sorted_lower: torch.Tensor, sorted_upper: torch.Tensor) -> torch.Tensor:
    """:func:`assign_covering` as positions in the groups' :func:`cover_order`.

    Args:
        lower: item minima ``[*S]``, or ``None`` when every item minimum is 0 (softmax
            rows), which the caller guarantees.
        upper: item maxima ``[*S]``.
        sorted_lower: ``l_g`` in cover order, ``[G]``.
        sorted_upper: ``u_g`` in cover order, ``[G]``.

    Returns:
        ``[*S]`` int64 positions in ``[0, G)``: ``order[position]`` is the group.
    """
    shape, groups = upper.shape, sorted_upper.numel()
    if groups == 1:
        return torch.zeros(shape, dtype=torch.long, device=upper.device)
    upper = upper.reshape(-1)
    zero_lower = not bool(sorted_lower.any())
    if zero_lower and (lower is None or not bool(lower.any())):
        return _covering_upper_only(upper, sorted_upper).view(shape)
    if lower is None:
        lower = torch.zeros_like(upper)
    lower = lower.reshape(-1)
    position = torch.empty(upper.shape, dtype=torch.long, device=upper.device)
    for start in range(0, upper.numel(), _CPU_BLOCK):
        part = slice(start, start + _CPU_BLOCK)
        clipped = ((upper[part, None] - sorted_upper).clamp_(min=0)
                   + (sorted_lower - lower[part, None]).clamp_(min=0))  # [block, G]
        torch.argmin(clipped, dim=1, out=position[part])  # first = narrowest
    return position.view(shape)


def _covering_upper_only(upper: torch.Tensor, sorted_upper: torch.Tensor) -> torch.Tensor:
    """:func:`covering_positions` when every lower bound is 0 (softmax rows): ``[R]``.

    The first group with ``u_g >= M`` is at position ``#{g: u_g < M}`` (the uppers
    grow along the cover order), counted as ``sum_g max(sign(M - u_g), 0)`` over a
    ``[G, block]`` table: vectorised float arithmetic, 2-3x faster on CPU than
    ``searchsorted``'s scalar binary searches (measured, 50k-190k rows, G=8). Where no group covers ``M`` the count is
    ``G``; clamping it to the first of the widest groups is exact, because an ``M``
    that some group covers counts at most the groups narrower than the widest. A NaN
    ``M`` gives a NaN count: position 0, the narrowest group.
    """
    groups = sorted_upper.numel()
    widest = int(torch.searchsorted(sorted_upper.contiguous(), sorted_upper[-1:]))
    bounds = sorted_upper.reshape(groups, 1)
    position = torch.empty(upper.shape, dtype=torch.long, device=upper.device)
    for start in range(0, upper.numel(), _CPU_BLOCK):
        part = slice(start, start + _CPU_BLOCK)
        below = torch.sub(upper[part], bounds).sign_().clamp_(min=0)  # [G, block]
        count = below.sum(dim=0).nan_to_num_(0.0).clamp_(max=widest)
        position[part].copy_(count)
    return position


def range_distances(lower: torch.Tensor, upper: torch.Tensor, group_lower: torch.Tensor,
                    group_upper: torch.Tensor, distance: str = 'l2') -> torch.Tensor:
    """Distance of every item's range to every group's range.

    ``l2``: ``(M - u_g)^2 + (m - l_g)^2``; ``l1``: ``|M - u_g| + |m - l_g|``.

    Args:
        lower: item minima ``m``, shape ``[*S]``.
        upper: item maxima ``M``, shape ``[*S]``.
        group_lower: group bounds ``l_g``, shape ``[G]``.
        group_upper: group bounds ``u_g``, shape ``[G]``.
        distance: ``'l2'`` or ``'l1'``.

    Returns:
        ``[*S, G]`` distances.
    """
    d_upper = upper.unsqueeze(-1) - group_upper
    d_lower = lower.unsqueeze(-1) - group_lower
    if distance == 'l2':
        return d_upper * d_upper + d_lower * d_lower
    return d_upper.abs() + d_lower.abs()


def assign_groups(lower: torch.Tensor, upper: torch.Tensor, group_lower: torch.Tensor,
                  group_upper: torch.Tensor, distance: str = 'l2') -> torch.Tensor:
    """Index of the nearest group for every item: ``argmin_g distance``.

    Args:
        lower: item minima, shape ``[*S]``.
        upper: item maxima, shape ``[*S]``.
        group_lower: ``[G]``.
        group_upper: ``[G]``.
        distance: ``'l2'`` or ``'l1'``.

    Returns:
        ``[*S]`` int64 group indices in ``[0, G)``; ties go to the lowest index
        (exactly ``range_distances(...).argmin(-1)``, NaN distances included).

    Example:
        >>> assign_groups(torch.tensor([0., -5.]), torch.tensor([1., 5.]),
        ...               torch.tensor([0., -4.]), torch.tensor([1., 4.]))
        tensor([0, 1])
    """
    if group_lower.numel() == 1:
        return torch.zeros(lower.shape, dtype=torch.long, device=lower.device)
    if lower.numel() * group_lower.numel() <= _TABLE_PAIRS:
        return range_distances(lower, upper, group_lower, group_upper, distance).argmin(dim=-1)
    return _assign_blocks(lower, upper, group_lower, group_upper, distance)


def _assign_blocks(lower: torch.Tensor, upper: torch.Tensor, group_lower: torch.Tensor,
                   group_upper: torch.Tensor, distance: str) -> torch.Tensor:
    """:func:`assign_groups` for many items, block by block.

    Never builds the whole ``[*S, G]`` table (e.g. ``[tokens, C, G]`` when every token
    is an instance). On CPU, ``argmin`` over a short axis and comparisons into bool
    tensors are slow scalar loops, so a block's distances are laid out ``[G, block]``
    and the argmin is found with vectorised float arithmetic: NaN distances become
    -1 (``argmin`` returns the first NaN), ``miss_g = sign(d_g - min_g d_g)`` is 0 at
    every minimum (and where all distances are inf, as ``inf - inf`` is NaN), and
    the first minimum is the number of leading misses,
    ``sum_g prod_{g' <= g} miss_g'``.
    """
    shape, groups = lower.shape, group_lower.numel()
    lower, upper = lower.reshape(-1), upper.reshape(-1)
    index = torch.empty(lower.shape, dtype=torch.long, device=lower.device)
    if lower.device.type != 'cpu':
        for start in range(0, lower.numel(), _DEVICE_BLOCK):
            part = slice(start, start + _DEVICE_BLOCK)
            torch.argmin(range_distances(lower[part], upper[part], group_lower, group_upper,
                                         distance), dim=-1, out=index[part])
        return index.view(shape)
    centre_lower, centre_upper = group_lower.reshape(groups, 1), group_upper.reshape(groups, 1)
    # softmax rows: every lower bound and centre is 0, and d + (0 - 0)^2 == d exactly
    zero_lower = not bool(centre_lower.any()) and not bool(lower.any())
    width = min(_CPU_BLOCK, lower.numel())
    d_upper = torch.empty(groups, width, dtype=torch.result_type(upper, centre_upper))
    d_lower = torch.empty(groups, width, dtype=torch.result_type(lower, centre_lower))
    nearest, leading, count = (torch.empty(width, dtype=d_upper.dtype) for _ in range(3))
    for start in range(0, lower.numel(), _CPU_BLOCK):
        part = slice(start, start + _CPU_BLOCK)
        size = index[part].numel()
        dist, other = d_upper[:, :size], d_lower[:, :size]  # [G, size]
        torch.sub(upper[part], centre_upper, out=dist)      # same values as range_distances
        if distance == 'l2':
            dist.mul_(dist)
        else:
            dist.abs_()
        if not zero_lower:
            torch.sub(lower[part], centre_lower, out=other)
            dist.add_(other.mul_(other) if distance == 'l2' else other.abs_())
        dist.nan_to_num_(nan=-1.0, posinf=float('inf'), neginf=float('-inf'))
        miss = dist.sub_(torch.amin(dist, dim=0, out=nearest[:size])).sign_().nan_to_num_(0.0)
        run, first = leading[:size].copy_(miss[0]), count[:size].copy_(miss[0])
        for group in range(1, groups - 1):
            first.add_(run.mul_(miss[group]))
        index[part].copy_(first)
    return index.view(shape)

"""Assignment of items (channels or softmax rows) to the nearest group range."""
from __future__ import annotations

import torch

DISTANCES = ('l2', 'l1')


def check_distance(distance: str) -> str:
    """Validate the distance name (``'l2'`` or ``'l1'``)."""
    if distance not in DISTANCES:
        raise ValueError(f'distance={distance!r} is not supported: allowed are {DISTANCES}')
    return distance


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
        ``[*S]`` int64 group indices in ``[0, G)``; ties go to the lowest index.

    Example:
        >>> assign_groups(torch.tensor([0., -5.]), torch.tensor([1., 5.]),
        ...               torch.tensor([0., -4.]), torch.tensor([1., 4.]))
        tensor([0, 1])
    """
    if group_lower.numel() == 1:
        return torch.zeros(lower.shape, dtype=torch.long, device=lower.device)
    return range_distances(lower, upper, group_lower, group_upper, distance).argmin(dim=-1)

"""Views that put an activation tensor in instance-major 3-D form.

Group quantization needs, for every instance (image) and channel, the channel's
range over that instance's tokens. Wrapped layers see tensors in different
layouts; these helpers give one canonical view without copying:

- tokens-last tensors ``[B', ..., C]`` (Linear inputs, Q/K/V) become ``[I, T, C]``,
  where ``B' = I * k`` (e.g. ``k`` attention windows per image, contiguous per image
  as Swin's window partition lays them out) and ``T = k * tokens``;
- channels-first tensors ``[B, C, *spatial]`` (conv inputs) become ``[B, C, T]``;
- softmax maps ``[..., N]`` become rows ``[R, N]`` (every row is an item).
"""
from __future__ import annotations

import torch

CHANNEL_LAST = -1
CHANNEL_FIRST = 1


def check_channel_dim(channel_dim: int) -> int:
    """Validate a channel dimension: ``-1`` (tokens-last) or ``1`` (channels-first)."""
    if channel_dim not in (CHANNEL_LAST, CHANNEL_FIRST):
        raise ValueError(f'channel_dim={channel_dim!r} is not supported: allowed are '
                         f'{CHANNEL_LAST} (tokens-last [B, ..., C]) and '
                         f'{CHANNEL_FIRST} (channels-first [B, C, H, W])')
    return channel_dim


def instance_view(x: torch.Tensor, channel_dim: int, num_instances: int | None) -> torch.Tensor:
    """Instance-major 3-D view of ``x``.

    Args:
        x: ``[B', ..., C]`` when ``channel_dim == -1``; ``[B, C, *spatial]`` when
            ``channel_dim == 1``.
        channel_dim: ``-1`` or ``1``.
        num_instances: number of images ``I`` in the batch; ``None`` means ``B'``
            (every leading index is its own instance).

    Returns:
        ``[I, T, C]`` (tokens-last) or ``[I, C, T]`` (channels-first).

    Raises:
        ValueError: when the leading dimension is not a multiple of ``I`` (or, for
            channels-first inputs, not equal to it).
    """
    instances = x.shape[0] if num_instances is None else num_instances
    if instances < 1 or x.shape[0] % instances:
        raise ValueError(f'num_instances={instances} does not divide the leading '
                         f'dimension {x.shape[0]} of an input of shape {tuple(x.shape)}')
    if channel_dim == CHANNEL_LAST:
        return x.reshape(instances, -1, x.shape[-1])
    if instances != x.shape[0]:
        raise ValueError(f'num_instances={instances} must equal the batch size '
                         f'{x.shape[0]} for a channels-first input')
    return x.reshape(instances, x.shape[1], -1)


def token_axis(channel_dim: int) -> int:
    """Axis of the tokens in the view returned by :func:`instance_view`."""
    return 1 if channel_dim == CHANNEL_LAST else 2


def channel_axis(channel_dim: int) -> int:
    """Axis of the channels in the view returned by :func:`instance_view`."""
    return 2 if channel_dim == CHANNEL_LAST else 1


def num_channels(x: torch.Tensor, channel_dim: int) -> int:
    """Channel count of ``x`` for the given layout."""
    return x.shape[channel_dim]


def instance_channel_ranges(x: torch.Tensor, channel_dim: int,
                            num_instances: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance, per-channel minimum and maximum.

    Args:
        x: activation (see :func:`instance_view`).
        channel_dim: ``-1`` or ``1``.
        num_instances: images in the batch, or ``None`` for ``x.shape[0]``.

    Returns:
        ``(m, M)``, each ``[I, C]``.
    """
    view = instance_view(x, channel_dim, num_instances)
    lower, upper = torch.aminmax(view, dim=token_axis(channel_dim))
    return lower, upper


def expand_to_view(params: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Make per-``[I, C]`` parameters broadcast against the instance view."""
    return params.unsqueeze(token_axis(channel_dim))


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of a softmax map: ``[..., N] -> [R, N]`` (a view when contiguous)."""
    return x.reshape(-1, x.shape[-1])

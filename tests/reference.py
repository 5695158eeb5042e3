"""Reference implementations the tests hold the library's fast paths against."""
import torch

from igq_plugin.quant.layout import CHANNEL_LAST, _check_instances as check_instances


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
    instances = check_instances(x, channel_dim, num_instances)
    if channel_dim == CHANNEL_LAST:
        return x.reshape(instances, -1, x.shape[-1])
    return x.reshape(instances, x.shape[1], -1)

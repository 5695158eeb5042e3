"""Item layouts: which entries of an activation form one quantized item.

Two layouts exist, as small frozen objects (:class:`ChannelLayout`,
:class:`SoftmaxRowLayout`) that the quantizers call instead of branching on a kind
string; the functions below are their building blocks.

Group quantization needs, for every instance (image) and channel, the channel's
range over that instance's tokens. Wrapped layers see tensors in different
layouts; these helpers give one canonical view without copying:

- tokens-last tensors ``[B', ..., C]`` (Linear inputs, Q/K/V) become ``[I, T, C]``,
  where ``B' = I * k`` (e.g. ``k`` attention windows per image, contiguous per image
  as Swin's window partition lays them out) and ``T = k * tokens``;
- channels-first tensors ``[B, C, *spatial]`` (conv inputs) become ``[B, C, T]``;
- softmax maps ``[..., N]`` become rows ``[R, N]`` (every row is an item).

The run-time path does not reshape the activation at all: :func:`split_instances`
only splits the leading dimension (always a view, whatever the strides), ranges are
reduced over the remaining token dimensions, and per-item parameters are given the
shape that broadcasts against that view (:func:`instance_param_view`,
:func:`row_param_view`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .primitives import fake_quantize

CHANNEL_LAST = -1
CHANNEL_FIRST = 1


def check_channel_dim(channel_dim: int) -> int:
    """Validate a channel dimension: ``-1`` (tokens-last) or ``1`` (channels-first)."""
    if channel_dim not in (CHANNEL_LAST, CHANNEL_FIRST):
        raise ValueError(f'channel_dim={channel_dim!r} is not supported: allowed are '
                         f'{CHANNEL_LAST} (tokens-last [B, ..., C]) and '
                         f'{CHANNEL_FIRST} (channels-first [B, C, H, W])')
    return channel_dim


def _check_instances(x: torch.Tensor, channel_dim: int, num_instances: int | None) -> int:
    instances = x.shape[0] if num_instances is None else num_instances
    if instances < 1 or x.shape[0] % instances:
        raise ValueError(f'num_instances={instances} does not divide the leading '
                         f'dimension {x.shape[0]} of an input of shape {tuple(x.shape)}')
    if channel_dim == CHANNEL_FIRST and instances != x.shape[0]:
        raise ValueError(f'num_instances={instances} must equal the batch size '
                         f'{x.shape[0]} for a channels-first input')
    return instances


def split_instances(x: torch.Tensor, channel_dim: int,
                    num_instances: int | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """View of ``x`` with the instances on the first axis, and its token axes.

    This never copies: tokens-last inputs only have
    their leading dimension split, ``[B', ..., C] -> [I, B'/I, ..., C]``;
    channels-first inputs ``[B, C, *spatial]`` are returned as they are.

    Args:
        x: ``[B', ..., C]`` (``channel_dim == -1``, at least 2-D) or
            ``[B, C, *spatial]`` (``channel_dim == 1``).
        channel_dim: ``-1`` or ``1``.
        num_instances: images ``I`` in the batch, or ``None`` for ``x.shape[0]``.

    Returns:
        ``(view, token_dims)``: reducing ``view`` over ``token_dims`` gives ``[I, C]``.

    Raises:
        ValueError: when the leading dimension is not a multiple of ``I`` (or, for
            channels-first inputs, not equal to it).
    """
    if x.dim() < 2:
        raise ValueError(f'an input of shape {tuple(x.shape)} has no instance and channel '
                         f'dimensions: need at least 2 dimensions')
    instances = _check_instances(x, channel_dim, num_instances)
    if channel_dim == CHANNEL_LAST:
        view = x.unflatten(0, (instances, x.shape[0] // instances))  # [I, B'/I, ..., C]
        return view, tuple(range(1, view.dim() - 1))
    return x, tuple(range(2, x.dim()))


def instance_param_view(params: torch.Tensor, view: torch.Tensor,
                        channel_dim: int) -> torch.Tensor:
    """Make per-``[I, C]`` parameters broadcast against :func:`split_instances`' view."""
    if channel_dim == CHANNEL_LAST:  # [I, 1, ..., 1, C]
        return params.reshape((params.shape[0],) + (1,) * (view.dim() - 2) + params.shape[-1:])
    return params.reshape(params.shape + (1,) * (view.dim() - 2))  # [B, C, 1, ...]


def instance_channel_ranges(x: torch.Tensor, channel_dim: int,
                            num_instances: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-instance, per-channel minimum and maximum.

    Args:
        x: activation (see :func:`split_instances`).
        channel_dim: ``-1`` or ``1``.
        num_instances: images in the batch, or ``None`` for ``x.shape[0]``.

    Returns:
        ``(m, M)``, each ``[I, C]``.
    """
    view, token_dims = split_instances(x, channel_dim, num_instances)
    if not token_dims:  # [B, C] channels-first: one token per channel
        return view.clone(), view.clone()
    # two vectorised reductions; torch.aminmax(dim=...) is a scalar loop on CPU,
    # 10x slower when the reduced axis is not the contiguous one
    if channel_dim == CHANNEL_LAST and view.shape[-1] % 64 and view.numel() >= _BLOCKED_ELEMENTS:
        try:
            tokens = view.view(view.shape[0], -1, view.shape[-1])  # [I, T, C], never a copy
        except RuntimeError:  # token axes that do not merge (e.g. a permuted input)
            tokens = None
        if tokens is not None:
            return (_reduce_token_blocks(tokens, torch.amin, torch.minimum),
                    _reduce_token_blocks(tokens, torch.amax, torch.maximum))
    return torch.amin(view, dim=token_dims), torch.amax(view, dim=token_dims)


# From this many elements on, tokens-last ranges over a channel count that is not a
# multiple of 64 are reduced in blocks of tokens.
_BLOCKED_ELEMENTS = 1 << 18
_TOKEN_BLOCK = 32


def _reduce_token_blocks(tokens: torch.Tensor, reduce, combine) -> torch.Tensor:
    """``reduce(tokens, dim=1)`` of ``[I, T, C]``, block by block of tokens: ``[I, C]``.

    The CPU kernel of a reduction over a non-contiguous axis is vectorised over 64
    channels at a time and runs the remaining ``C % 64`` channels (e.g. 32 of C=96)
    as a strided scalar loop over all tokens; over blocks of 32 tokens that loop
    stays in L1 (1.3x faster for C=96, measured; no gain for multiples of 64).
    """
    count, block = tokens.shape[1], _TOKEN_BLOCK
    whole = count - count % block
    if whole == 0:
        return reduce(tokens, dim=1)
    blocks = tokens[:, :whole].unflatten(1, (whole // block, block))  # [I, T / b, b, C]
    out = reduce(reduce(blocks, dim=2), dim=1)
    if whole < count:
        combine(out, reduce(tokens[:, whole:], dim=1), out=out)
    return out


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def softmax_row_max(x: torch.Tensor) -> torch.Tensor:
    """Maximum of every row of a softmax map ``[..., N]``: ``[R]`` (no copy of ``x``).

    On CPU a float ``amax`` over rows shorter than 64 is a scalar loop, 4x slower
    than an integer ``amax`` over the same bits. When no element has its sign bit
    set (a softmax map never has), the bit patterns read as integers sort like the
    values, with +inf and NaN last as ``amax`` returns them; the check is one
    vectorised integer ``min``. Otherwise the float ``amax`` is used.
    """
    as_int = _SAME_SIZE_INT.get(x.element_size())
    if x.device.type == 'cpu' and x.is_floating_point() and as_int is not None and x.numel():
        bits = x.view(as_int)
        if bool(bits.min() >= 0):
            return bits.amax(dim=-1).view(x.dtype).reshape(-1)
    return x.amax(dim=-1).reshape(-1)


def row_param_view(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Make per-row parameters ``[R]`` broadcast against the map ``[..., N]``."""
    return params.reshape(x.shape[:-1] + (1,))


@dataclass(frozen=True)
class ChannelLayout:
    """Items are the channels of each instance (Linear/conv inputs, Q/K/V).

    Channels keep their identity from one input to the next, so their count is
    known when the layer is built and per-channel statistics can be accumulated
    across calibration batches (``fixed_items``).

    Attributes:
        channel_dim: ``-1`` for tokens-last inputs ``[B', ..., C]``, ``1`` for
            channels-first inputs ``[B, C, *spatial]``.
    """

    channel_dim: int = CHANNEL_LAST
    kind: ClassVar[str] = 'channel'
    item_name: ClassVar[str] = 'channels'
    fixed_items: ClassVar[bool] = True

    def __post_init__(self):
        check_channel_dim(self.channel_dim)

    def ranges(self, x: torch.Tensor, num_instances: int | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, M)``: every channel's range on every instance, each ``[I, C]``."""
        return instance_channel_ranges(x, self.channel_dim, num_instances)

    def ranges_or_upper_only(self, x: torch.Tensor, num_instances: int | None
                            ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """As :meth:`ranges`; the lower bounds are never implied (never ``None``)."""
        return self.ranges(x, num_instances)

    def fake_quantize(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                      bits: int, num_instances: int | None) -> torch.Tensor:
        """Fake-quantize ``x`` with per-item ``[I, C]`` (or shared 0-dim) parameters.

        The parameters broadcast against a view of ``x`` (no copy of ``x``); the zero
        points are integers (from :func:`~.primitives.qparams_from_bounds`).
        """
        view, _ = split_instances(x, self.channel_dim, num_instances)
        scale, zero = (p if p.dim() == 0 else instance_param_view(p, view, self.channel_dim)
                       for p in (scale, zero))
        return fake_quantize(view, scale, zero, bits, integer_zero_point=True).reshape(x.shape)

    def per_channel(self, vector: torch.Tensor) -> torch.Tensor:
        """A ``[C]`` vector shaped to broadcast along the channel dimension."""
        return vector.view((-1,) if self.channel_dim == CHANNEL_LAST else (-1, 1, 1))

    def histogram_items(self, x: torch.Tensor, num_instances: int | None,
                        lower: torch.Tensor, upper: torch.Tensor, max_items: int):
        """``(values, item, lower, upper)`` for per-item histograms: ``values`` a view
        of ``x``, ``item`` the index (into the flat ``[I * C]`` ranges) of every
        element's item, broadcastable against ``values``. Every item is kept (a layer
        has few channels)."""
        view, _ = split_instances(x, self.channel_dim, num_instances)
        instances, channels = view.shape[0], lower.numel() // view.shape[0]
        item = torch.arange(instances * channels, device=x.device).view(instances, channels)
        return view, instance_param_view(item, view, self.channel_dim), lower, upper


@dataclass(frozen=True)
class SoftmaxRowLayout:
    """Items are the rows of a softmax attention map ``[..., N]``.

    Rows are non-negative (every lower bound is 0) and have no identity across
    inputs: their number is known only at run time and nothing per row is kept
    across batches (``fixed_items`` is false).
    """

    kind: ClassVar[str] = 'softmax'
    item_name: ClassVar[str] = 'softmax rows'
    fixed_items: ClassVar[bool] = False
    channel_dim: ClassVar[int] = CHANNEL_LAST

    def ranges(self, x: torch.Tensor, num_instances: int | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(0, M)``: zeros and every row's maximum, each ``[R]``."""
        upper = softmax_row_max(x)
        return torch.zeros_like(upper), upper

    def ranges_or_upper_only(self, x: torch.Tensor, num_instances: int | None
                            ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(None, M)``: the lower bounds are all 0, so none is built."""
        return None, softmax_row_max(x)

    def fake_quantize(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                      bits: int, num_instances: int | None) -> torch.Tensor:
        """Fake-quantize the map with per-row ``[R]`` (or shared 0-dim) parameters."""
        scale, zero = (p if p.dim() == 0 else row_param_view(p, x) for p in (scale, zero))
        return fake_quantize(x, scale, zero, bits, integer_zero_point=True)

    def per_channel(self, vector: torch.Tensor) -> torch.Tensor:
        """A map has one static range: the single entry of ``vector`` as a 0-dim tensor."""
        return vector.reshape(())

    def histogram_items(self, x: torch.Tensor, num_instances: int | None,
                        lower: torch.Tensor, upper: torch.Tensor, max_items: int):
        """As :meth:`ChannelLayout.histogram_items`, for at most ``max_items`` rows of
        the map, evenly spaced (a map has thousands of rows)."""
        rows = x.reshape(-1, x.shape[-1])
        step = -(-rows.shape[0] // max_items)
        rows, lower, upper = rows[::step], lower[::step], upper[::step]
        item = torch.arange(rows.shape[0], device=x.device).view(-1, 1)
        return rows, item, lower, upper


Layout = ChannelLayout | SoftmaxRowLayout
KINDS = (ChannelLayout.kind, SoftmaxRowLayout.kind)


def build_layout(kind: str, channel_dim: int = CHANNEL_LAST) -> Layout:
    """The layout of a quantizer's items by name: ``'channel'`` or ``'softmax'``."""
    if kind == ChannelLayout.kind:
        return ChannelLayout(channel_dim)
    if kind == SoftmaxRowLayout.kind:
        return SoftmaxRowLayout()
    raise ValueError(f'kind={kind!r} is not supported: allowed are {KINDS}')

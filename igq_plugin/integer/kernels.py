"""Group-wise integer matrix products with stock PyTorch kernels.

For one instance whose input channels are sorted by group (group ``g`` holds the
channels ``c`` of the slice ``[start_g, start_g + count_g)``), a layer computes::

    y[t, o] = s_w[o] * sum_g s_g * P_g[t, o] + b[o]
    P_g[t, o] = sum_{c in g} (q_x[t, c] - z_g) * (q_w[o, c] - z_w[o])

``P_g`` is an integer. Three backends compute it exactly:

- ``'fp32'``: a float32 GEMM / convolution on integer-valued tensors. Every product
  is an integer and every partial sum, in whatever order the BLAS adds, is bounded by
  ``B = (2^b_a - 1) * max_o sum_k |q_w[o, k] - z_w[o]|`` (``k`` over the input
  channels and kernel taps). Float32 holds every integer up to ``2^24`` exactly, so
  with ``B < 2^24`` no addition rounds and ``P_g`` is exact (checked when the layer is
  built: :func:`exact_backend`). ``torch.addmm(..., alpha=s_g)`` then scales the
  block's integer sum and adds it to the output: the GEMM writes ``alpha * P`` into
  the accumulator (a BLAS that splits a long ``K`` into blocks applies ``alpha`` per
  block, each block sum still exact).
- ``'fp64'``: the same in float64 (integers exact up to ``2^53``), where ``B`` is too
  large for float32 (8-bit activations and weights over many channels).
- ``'onednn'`` (convolutions): oneDNN's quantized convolution
  (``torch.ops.onednn.qconv2d_pointwise``) on the uint8 codes and int8 centred weights,
  accumulating in int32 and rescaling by ``s_g * s_w[o]`` once per group, the next
  group summed into the same output by its ``sum`` post-op. On CPUs without VNNI its
  AVX2 kernel adds pairs of u8*s8 products in int16 (``vpmaddubsw`` saturates), so it
  is used only where ``2 * (2^b_a - 1) * max |q_w - z_w| <= 32767``.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

BACKENDS = ('fp32', 'fp64', 'onednn')
FP32_EXACT = 1 << 24  # float32 represents every integer of magnitude <= 2^24
INT16_SATURATION = (1 << 15) - 1  # AVX2 u8*s8 pair sums are saturated to int16
INT32_LIMIT = (1 << 31) - 1


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's quantized convolution."""
    try:
        torch.ops.onednn.qconv2d_pointwise
        torch.ops.onednn.qconv_prepack
    except (AttributeError, RuntimeError):
        return False
    return torch.backends.mkldnn.is_available()


def partial_sum_bound(centered_weight: torch.Tensor, a_bits: int) -> int:
    """``B``: the largest magnitude any partial sum of ``P_g`` can reach.

    Args:
        centered_weight: ``q_w - z_w``, ``[O, ...]`` integer-valued.
        a_bits: activation bit-width (``|q_x - z_g| <= 2^b_a - 1``).
    """
    rows = centered_weight.reshape(centered_weight.shape[0], -1).abs().sum(1, dtype=torch.float64)
    return int(rows.max().item()) * ((1 << a_bits) - 1)


def exact_backend(centered_weight: torch.Tensor, a_bits: int, conv: bool,
                  requested: str | None = None) -> str:
    """The fastest backend that computes every ``P_g`` exactly for these weights.

    Args:
        centered_weight: ``q_w - z_w``, ``[O, ...]``.
        a_bits: activation bit-width.
        conv: a convolution (``'onednn'`` is a candidate) or a Linear.
        requested: force a backend (tests, benchmarks); refused when not exact.

    Raises:
        ValueError: an unknown backend, or one that would not be exact here.
    """
    bound = partial_sum_bound(centered_weight, a_bits)
    largest = int(centered_weight.abs().max().item()) if centered_weight.numel() else 0
    exact = {'fp64': bound < (1 << 53), 'fp32': bound < FP32_EXACT,
             'onednn': (conv and onednn_available() and a_bits <= 8 and largest <= 127
                        and 2 * ((1 << a_bits) - 1) * largest <= INT16_SATURATION
                        and bound < INT32_LIMIT)}
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f'backend={requested!r} is not supported: allowed are {BACKENDS}')
        if not exact[requested]:
            raise ValueError(f'backend={requested!r} is not exact for this layer (partial '
                             f'sums up to {bound}, largest centred weight code {largest}, '
                             f'a_bits={a_bits}); exact here: '
                             f'{[b for b in BACKENDS if exact[b]]}')
        return requested
    return next(b for b in ('onednn', 'fp32', 'fp64') if exact[b])


class SortedGroups(NamedTuple):
    """Channels of one instance sorted by group: ``order`` ``[C]`` (a permutation) and
    the non-empty groups as ``(group, start, count)``."""

    order: torch.Tensor
    spans: tuple[tuple[int, int, int], ...]


def sort_by_group(group: torch.Tensor, groups: int) -> SortedGroups:
    """:class:`SortedGroups` of one instance's ``[C]`` group indices."""
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=groups).tolist()
    spans, start = [], 0
    for index, count in enumerate(counts):
        if count:
            spans.append((index, start, count))
            start += count
    return SortedGroups(order, tuple(spans))


def grouped_linear(codes: torch.Tensor, weight: torch.Tensor, spans: Sequence[tuple],
                   scale: Sequence[float]) -> torch.Tensor:
    """``sum_g s_g * P_g`` of one instance (fp32 or fp64 backend).

    Args:
        codes: ``[T, C]`` centred codes ``q_x - z_g``, channels sorted by group.
        weight: ``[O, C]`` centred weight codes, columns in the same order.
        spans: ``(group, start, count)`` of the non-empty groups.
        scale: ``s_g`` by group index.

    Returns:
        ``[T, O]`` in the dtype of ``codes``.
    """
    out = codes.new_empty(codes.shape[0], weight.shape[0])
    for position, (group, start, count) in enumerate(spans):
        block = slice(start, start + count)
        torch.addmm(out, codes[:, block], weight[:, block].t(), beta=0 if position == 0 else 1,
                    alpha=scale[group], out=out)
    return out


def grouped_conv(codes: torch.Tensor, weight: torch.Tensor, spans: Sequence[tuple],
                 scale: Sequence[float], stride, padding, dilation) -> torch.Tensor:
    """``sum_g s_g * P_g`` of one image as convolutions (fp32 or fp64 backend).

    Args:
        codes: ``[1, C, H, W]`` centred codes, channels sorted by group.
        weight: ``[O, C, kh, kw]`` centred weight codes, input channels in that order.

    Returns:
        ``[1, O, H', W']``. Zero padding of centred codes is zero padding of ``x_hat``.
    """
    out = None
    for group, start, count in spans:
        block = slice(start, start + count)
        part = F.conv2d(codes[:, block], weight[:, block], None, stride, padding, dilation)
        out = part.mul_(scale[group]) if out is None else out.add_(part, alpha=scale[group])
    return out


def onednn_conv(codes: torch.Tensor, weight: torch.Tensor, spans: Sequence[tuple],
                scale: Sequence[float], zero: Sequence[int], weight_scale: torch.Tensor,
                bias: torch.Tensor | None, stride, padding, dilation) -> torch.Tensor:
    """``s_w[o] * sum_g s_g * P_g + b`` of one image with oneDNN's int8 convolution.

    Args:
        codes: ``[1, C, H, W]`` uint8 codes ``q_x`` (not centred), sorted by group.
        weight: ``[O, C, kh, kw]`` int8 centred weight codes, in the same order.
        zero: ``z_g`` by group index (the kernel subtracts it, padding included).
        weight_scale: ``[O]`` float32 ``s_w``.

    Returns:
        ``[1, O, H', W']`` float32 (channels-last memory).
    """
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    no_zero = torch.zeros(weight.shape[0], dtype=torch.long)
    out = None
    for group, start, count in spans:
        block = codes[:, start:start + count].contiguous(memory_format=torch.channels_last)
        packed = torch.ops.onednn.qconv_prepack(
            weight[:, start:start + count].contiguous(), weight_scale, scale[group],
            zero[group], stride, padding, dilation, 1, list(block.shape))
        common = (block, scale[group], zero[group], packed, weight_scale, no_zero)
        if out is None:
            out = torch.ops.onednn.qconv2d_pointwise(
                *common, bias, stride, padding, dilation, 1, 1.0, 0, torch.float32, 'none',
                [], '')
        else:
            out = torch.ops.onednn.qconv2d_pointwise.binary(
                *common, out, None, stride, padding, dilation, 1, 1.0, 0, torch.float32,
                1.0, 0, 'sum', 1.0, 'none', [], '')
    return out

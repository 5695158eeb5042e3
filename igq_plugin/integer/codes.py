"""Integer codes of activations and weights, with the group of every channel.

The integer executor and the fake-quant layers must quantize the same channel of the
same image with the same group: :func:`group_assignment` therefore calls the
quantizer's own code (``IGQQuantizer.assign`` and ``group_tables``) and only turns its
result into the form an integer GEMM needs, the group index of every (instance,
channel) and one ``(scale, zero point)`` per group.

Every supported quantizer is a group quantizer in this form:

- :class:`~igq_plugin.quantizers.IGQQuantizer` (``'cover'`` or ``'nearest'``, any G):
  the groups are assigned per instance at run time;
- :class:`~igq_plugin.quantizers.PerTensorQuantizer`: one group holding every channel;
- :class:`~igq_plugin.quantizers.StaticGroupQuantizer`: G fixed blocks of channels;
- :class:`~igq_plugin.quantizers.FixedRangeQuantizer`: every channel its own group
  (the image's colour channels, each with its own pixel range).

The others have no integer form here and are refused by name: the upper-bound
quantizer recomputes a range per channel and image (not deployable), RepQ-ViT's
quantizers use a fractional zero point after the fold and a log2 softmax code.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..quant.layout import CHANNEL_LAST, split_instances
from ..quant.primitives import qmax, qparams_from_bounds
from ..quantizers import (FixedRangeQuantizer, IGQQuantizer, PerTensorQuantizer,
                          StaticGroupQuantizer)

SUPPORTED_QUANTIZERS = (IGQQuantizer, PerTensorQuantizer, StaticGroupQuantizer,
                        FixedRangeQuantizer)


class GroupAssignment(NamedTuple):
    """Which group quantizes every channel, and the groups' parameters.

    Attributes:
        group: ``[I, C]`` int64 group of every channel of every instance, or ``[1, C]``
            when the groups do not depend on the input (every instance alike).
        scale: ``[G]`` float scale of every group.
        zero: ``[G]`` float zero point of every group (integers in ``[0, 2^b - 1]``).
    """

    group: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @property
    def per_instance(self) -> bool:
        """Whether the groups were assigned on this input, instance by instance."""
        return self.group.shape[0] > 1


class ActivationCodes(NamedTuple):
    """An activation as integer codes (what an integer kernel consumes).

    Attributes:
        codes: integer codes ``q`` of the shape of the input (uint8 up to 8 bits,
            int32 above), ``x_hat = scale[g] * (q - zero[g])`` for the channel's group.
        group, scale, zero: as :class:`GroupAssignment`.
        channel_dim: the input's channel dimension (``-1`` or ``1``).
    """

    codes: torch.Tensor
    group: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    channel_dim: int


def check_supported(quantizer: nn.Module, name: str = '') -> None:
    """Raise when the integer executor cannot run ``quantizer``.

    Raises:
        TypeError: the quantizer is not one of :data:`SUPPORTED_QUANTIZERS` (for
            example ``nn.Identity``: a layer whose input is not quantized).
        ValueError: a quantizer that is not calibrated, or not over channels.
    """
    label = name or type(quantizer).__name__
    if type(quantizer) not in SUPPORTED_QUANTIZERS:
        allowed = [cls.__name__ for cls in SUPPORTED_QUANTIZERS]
        raise TypeError(f'{label}: input quantizer {type(quantizer).__name__} '
                        f'(method={getattr(quantizer, "method", None)!r}) has no integer '
                        f'executor: allowed are {allowed}')
    if quantizer.kind != 'channel':
        raise ValueError(f'{label}: an integer layer needs a channel quantizer; got '
                         f'kind={quantizer.kind!r}')
    if not bool(quantizer.calibrated):
        raise ValueError(f'{label}: the input quantizer is not calibrated')


def _expand(values: torch.Tensor, groups: int) -> torch.Tensor:
    return values.reshape(-1).expand(groups) if values.numel() == 1 else values.reshape(-1)


def group_assignment(quantizer: nn.Module, x: torch.Tensor) -> GroupAssignment:
    """The group of every channel of ``x`` and the groups' parameters.

    Args:
        quantizer: a calibrated supported quantizer (:func:`check_supported`).
        x: its input, ``[B', ..., C]`` (``channel_dim=-1``) or ``[B, C, H, W]``.

    Returns:
        :class:`GroupAssignment`; for IGQ it is the quantizer's own ``assign(x)``.
    """
    channels = quantizer.channels
    device = x.device
    if isinstance(quantizer, IGQQuantizer):
        tables = quantizer.group_tables()
        groups = tables.scale.numel()
        return GroupAssignment(quantizer.assign(x), tables.scale, _expand(tables.zero, groups))
    if isinstance(quantizer, PerTensorQuantizer):
        scale, zero = qparams_from_bounds(quantizer.lower, quantizer.upper, quantizer.bits)
        group = torch.zeros(1, channels, dtype=torch.long, device=device)
        return GroupAssignment(group, scale.reshape(1), zero.reshape(1))
    if isinstance(quantizer, FixedRangeQuantizer):
        scale, zero = qparams_from_bounds(quantizer.lower, quantizer.upper, quantizer.bits)
        return GroupAssignment(torch.arange(channels, device=device)[None], scale, zero)
    # StaticGroupQuantizer: the channels of one block share their bounds by construction
    group = quantizer.channel_groups()
    first = torch.full((quantizer.groups,), channels, dtype=torch.long, device=device)
    first.scatter_reduce_(0, group, torch.arange(channels, device=device), 'amin')
    scale, zero = qparams_from_bounds(quantizer.channel_lower[first],
                                      quantizer.channel_upper[first], quantizer.bits)
    return GroupAssignment(group[None], scale, zero)


def instance_groups(assignment: GroupAssignment, instances: int) -> torch.Tensor:
    """``[I, C]`` group of every channel of every instance (expanding a shared row)."""
    group = assignment.group
    return group.expand(instances, -1) if group.shape[0] == 1 else group


def centered_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   bits: int) -> torch.Tensor:
    """``q - z`` as integer-valued floats, computed in place on a new tensor.

    ``clamp(round(x / s), -z, 2^b - 1 - z)`` equals ``clamp(round(x / s) + z, 0,
    2^b - 1) - z`` exactly for integer ``z`` (the identity the fake-quant kernel uses),
    and ``x * reciprocal(s)`` rounds as the fake-quant layers do, so these are the
    fake-quant codes bit for bit.

    Args:
        x: input; ``scale`` and ``zero`` broadcast against it (same dtype).
        bits: activation bit-width.
    """
    out = torch.mul(x, torch.reciprocal(scale))
    out.round_()
    return out.clamp_(-zero, qmax(bits) - zero)


def code_dtype(bits: int) -> torch.dtype:
    """The smallest integer dtype that holds unsigned ``bits``-bit codes."""
    return torch.uint8 if bits <= 8 else torch.int32


def activation_codes(quantizer: nn.Module, x: torch.Tensor) -> ActivationCodes:
    """The integer codes of ``x`` under ``quantizer``, with every channel's group.

    Dequantizing the codes (``scale[group] * (codes - zero[group])``) gives the
    quantizer's fake-quant output bit for bit.

    Args:
        quantizer: a calibrated :data:`SUPPORTED_QUANTIZERS` instance; its
            ``num_instances`` says how many images ``x`` holds.
        x: ``[B', ..., C]`` (tokens-last) or ``[B, C, H, W]`` (channels-first).

    Returns:
        :class:`ActivationCodes`.

    Example:
        >>> from igq_plugin.quantizers import PerTensorQuantizer
        >>> q = PerTensorQuantizer(4, channels=2)
        >>> _ = q.lower.fill_(-1.0), q.upper.fill_(2.0), q.calibrated.fill_(True)
        >>> activation_codes(q, torch.tensor([[-1.0, 2.0]])).codes
        tensor([[ 0, 15]], dtype=torch.uint8)
    """
    check_supported(quantizer, quantizer.layer_name)
    assignment = group_assignment(quantizer, x)
    channel_dim = quantizer.channel_dim
    view, _ = split_instances(x, channel_dim, quantizer.num_instances)
    group = instance_groups(assignment, view.shape[0])
    scale, zero = assignment.scale[group], assignment.zero[group]  # [I, C]
    if channel_dim == CHANNEL_LAST:  # [I, 1, ..., 1, C] against [I, B'/I, ..., C]
        shape = (group.shape[0],) + (1,) * (view.dim() - 2) + (group.shape[1],)
    else:  # [B, C, 1, ...] against [B, C, *spatial]
        shape = group.shape + (1,) * (view.dim() - 2)
    scale, zero = scale.reshape(shape).to(x.dtype), zero.reshape(shape).to(x.dtype)
    codes = (centered_codes(view, scale, zero, quantizer.bits) + zero).reshape(x.shape)
    return ActivationCodes(codes.to(code_dtype(quantizer.bits)), assignment.group,
                           assignment.scale, assignment.zero, channel_dim)


def dequantize_codes(codes: ActivationCodes, num_instances: int | None = None) -> torch.Tensor:
    """``x_hat`` of :func:`activation_codes`' result (float32), the fake-quant output."""
    values = codes.codes.to(torch.float32)
    view, _ = split_instances(values, codes.channel_dim, num_instances)
    group = instance_groups(GroupAssignment(codes.group, codes.scale, codes.zero),
                            view.shape[0])
    if codes.channel_dim == CHANNEL_LAST:
        shape = (group.shape[0],) + (1,) * (view.dim() - 2) + (group.shape[1],)
    else:
        shape = group.shape + (1,) * (view.dim() - 2)
    scale = codes.scale[group].reshape(shape).float()
    zero = codes.zero[group].reshape(shape).float()
    return ((view - zero) * scale).reshape(values.shape)


def weight_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 bits: int) -> torch.Tensor:
    """Per-output-channel weight codes ``q_w`` (uint8 up to 8 bits), the codes the
    weight quantizer's fake-quant uses: ``weight`` ``[O, ...]``, ``scale``/``zero``
    ``[O]``."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    scale, zero = scale.view(shape).to(weight.dtype), zero.view(shape).to(weight.dtype)
    codes = centered_codes(weight.detach(), scale, zero, bits) + zero
    return codes.to(code_dtype(bits))

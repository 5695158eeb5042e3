"""Linear and Conv2d layers that compute from integer codes.

An :class:`IntegerLinear` / :class:`IntegerConv2d` holds the weight as per-output-channel
codes (uint8 up to 8 bits) with their scales and zero points; the float weight is gone.
Its input quantizer stays (its calibrated tables and its run-time group assignment are
the fake-quant layer's own); per instance the layer sorts the input channels by group,
computes each group's integer sum exactly (:mod:`.kernels`) and rescales once per group::

    y[t, o] = s_w[o] * sum_g s_g * sum_{c in g} (q_x[t, c] - z_g) * (q_w[o, c] - z_w[o]) + b[o]

A Q/K/V output quantizer of a fused ``qkv`` Linear is kept as it is (fake-quant: the
attention matmuls of this executor run on dequantized operands).
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import QuantConv2d, QuantLinear
from ..nn.layers import fill_fold_padding
from ..quant.mode import QuantMode
from ..quant.primitives import qmax
from .codes import check_supported, group_assignment, instance_groups, weight_codes
from .kernels import (exact_backend, grouped_conv, grouped_linear, onednn_conv,
                      sort_by_group)


def _check_runnable(layer: nn.Module) -> None:
    if layer.input_quantizer.mode is not QuantMode.QUANTIZED:
        raise RuntimeError(f'{type(layer).__name__}: its input quantizer is in '
                           f'{layer.input_quantizer.mode.value} mode; an integer layer has no '
                           f'float weight and runs only quantized (no float_run)')


class _IntegerLayer(nn.Module):
    """Weight codes and parameters shared by the integer Linear and Conv2d."""

    def _set_weight(self, layer: nn.Module, backend: str | None, conv: bool) -> None:
        check_supported(layer.input_quantizer, type(layer).__name__)
        quantizer = layer.weight_quantizer
        if not bool(quantizer.calibrated):
            raise ValueError(f'{type(layer).__name__}: the weight quantizer is not calibrated')
        self.w_bits = quantizer.bits
        scale, zero = quantizer.scale.detach().float(), quantizer.zero_point.detach().float()
        codes = weight_codes(layer.weight.detach().float(), scale, zero, self.w_bits)
        self.register_buffer('weight_codes', codes)
        self.register_buffer('weight_scale', scale.clone())
        self.register_buffer('weight_zero', zero.clone())
        bias = layer.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)
        self.input_quantizer = layer.input_quantizer
        self.backend = exact_backend(self.centered_weight(torch.float64),
                                     self.input_quantizer.bits, conv, backend)

    def centered_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """``q_w - z_w`` as integer-valued ``dtype``, ``[O, ...]``."""
        shape = (-1,) + (1,) * (self.weight_codes.dim() - 1)
        return self.weight_codes.to(dtype) - self.weight_zero.view(shape).to(dtype)

    def _sorted_codes(self, x: torch.Tensor, group: torch.Tensor, assignment, dim: int):
        """Centred codes of ``x`` with the channels (``dim``) sorted by group."""
        sorted_groups = sort_by_group(group, assignment.scale.numel())
        ordered = group[sorted_groups.order]
        shape = [1] * x.dim()
        shape[dim] = -1
        scale = assignment.scale[ordered].to(x.dtype).view(shape)
        zero = assignment.zero[ordered].to(x.dtype).view(shape)
        codes = x.index_select(dim, sorted_groups.order)  # the one copy of the input
        codes.mul_(torch.reciprocal(scale)).round_()  # as the fake-quant rounding
        codes.clamp_(-zero, qmax(self.input_quantizer.bits) - zero)
        return codes, zero, sorted_groups

    def extra_repr(self) -> str:
        quantizer = self.input_quantizer
        return (f'w_bits={self.w_bits}, a_bits={quantizer.bits}, method={quantizer.method}, '
                f'backend={self.backend}')


class IntegerLinear(_IntegerLayer):
    """A :class:`~igq_plugin.nn.QuantLinear` run from integer codes.

    Build it with :meth:`from_quantized`. Input ``[B', ..., in_features]`` (``B'`` holds
    ``input_quantizer.num_instances`` images, e.g. the windows of each image) ->
    ``[B', ..., out_features]``.
    """

    @classmethod
    def from_quantized(cls, layer: QuantLinear, backend: str | None = None) -> 'IntegerLinear':
        """Convert a calibrated ``QuantLinear`` (its quantizers are reused, not copied).

        Args:
            backend: ``'fp32'`` or ``'fp64'`` (default: the fastest exact one).
        """
        if not isinstance(layer, QuantLinear):
            raise TypeError(f'IntegerLinear.from_quantized needs a QuantLinear; got '
                            f'{type(layer).__name__}')
        module = cls()
        module.in_features, module.out_features = layer.in_features, layer.out_features
        module._set_weight(layer, backend, conv=False)
        # igq-reparam's fold: the token standing for a zero-padded one (QuantLinear.forward)
        fold_padding = None if layer.fold_padding is None else layer.fold_padding.clone()
        module.register_buffer('fold_padding', fold_padding, persistent=False)
        output_quantizer = getattr(layer, 'output_quantizer', None)
        if output_quantizer is not None:
            module.output_quantizer = output_quantizer
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B', ..., in_features]`` -> ``[B', ..., out_features]`` (float32)."""
        _check_runnable(self)
        if x.numel() == 0:
            return x.new_empty(x.shape[:-1] + (self.out_features,))
        x = fill_fold_padding(x, self.fold_padding)  # as QuantLinear.forward
        quantizer = self.input_quantizer
        assignment = group_assignment(quantizer, x)
        instances = quantizer.num_instances or x.shape[0]
        if not assignment.per_instance:
            instances = 1  # one grouping for every image: one GEMM per group
        rows = x.reshape(instances, -1, self.in_features)  # [I, T, C]
        dtype = torch.float64 if self.backend == 'fp64' else torch.float32
        weight = self.centered_weight(dtype)
        group = instance_groups(assignment, instances)
        scale = assignment.scale.tolist()
        parts = []
        for index in range(instances):
            codes, _, spans = self._sorted_codes(rows[index], group[index], assignment, 1)
            parts.append(grouped_linear(codes.to(dtype), weight.index_select(1, spans.order),
                                        spans.spans, scale))
        out = parts[0] if instances == 1 else torch.cat(parts)
        out.mul_(self.weight_scale.to(dtype))  # s_w[o] after the groups' sum
        if self.bias is not None:
            out.add_(self.bias.to(dtype))
        out = out.to(x.dtype).reshape(x.shape[:-1] + (self.out_features,))
        output_quantizer = getattr(self, 'output_quantizer', None)
        return out if output_quantizer is None else output_quantizer(out)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                + super().extra_repr())


class IntegerConv2d(_IntegerLayer):
    """A :class:`~igq_plugin.nn.QuantConv2d` run from integer codes, image by image
    (the groups of a channels-first input are assigned per image)."""

    @classmethod
    def from_quantized(cls, layer: QuantConv2d, backend: str | None = None) -> 'IntegerConv2d':
        """Convert a calibrated ``QuantConv2d`` with ``groups=1`` and zero padding.

        Args:
            backend: ``'onednn'``, ``'fp32'`` or ``'fp64'`` (default: fastest exact).
        """
        if not isinstance(layer, QuantConv2d):
            raise TypeError(f'IntegerConv2d.from_quantized needs a QuantConv2d; got '
                            f'{type(layer).__name__}')
        if layer.groups != 1 or layer.padding_mode != 'zeros' or \
                isinstance(layer.padding, str):
            raise ValueError(f'IntegerConv2d: groups={layer.groups}, padding={layer.padding!r}, '
                             f'padding_mode={layer.padding_mode!r}: supported are groups=1 '
                             f'and numeric zero padding')
        module = cls()
        module.in_channels, module.out_channels = layer.in_channels, layer.out_channels
        module.kernel_size, module.stride = layer.kernel_size, layer.stride
        module.padding, module.dilation = layer.padding, layer.dilation
        module._set_weight(layer, backend, conv=True)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C_in, H, W]`` -> ``[B, C_out, H', W']`` (float32)."""
        _check_runnable(self)
        quantizer = self.input_quantizer
        assignment = group_assignment(quantizer, x)
        group = instance_groups(assignment, x.shape[0])
        scale = assignment.scale.tolist()
        geometry = (self.stride, self.padding, self.dilation)
        onednn = self.backend == 'onednn'
        dtype = torch.float64 if self.backend == 'fp64' else torch.float32
        weight = self.centered_weight(dtype)
        if onednn:
            weight, zero = weight.to(torch.int8), [int(z) for z in assignment.zero.tolist()]
        parts = []
        for index in range(x.shape[0]):
            codes, zeros, spans = self._sorted_codes(x[index:index + 1], group[index],
                                                     assignment, 1)
            ordered = weight.index_select(1, spans.order)
            if onednn:
                codes = codes.add_(zeros).to(torch.uint8)  # q_x = (q_x - z) + z
                parts.append(onednn_conv(codes, ordered, spans.spans, scale, zero,
                                         self.weight_scale, self._float_bias(), *geometry))
            else:
                parts.append(grouped_conv(codes.to(dtype), ordered, spans.spans, scale,
                                          *geometry))
        # oneDNN writes channels-last memory; callers of the float layer (mmcv's CPU
        # RoIAlign) read raw NCHW memory, so the result is made contiguous as F.conv2d's
        out = (parts[0] if len(parts) == 1 else torch.cat(parts)).contiguous()
        if not onednn:
            out.mul_(self.weight_scale.to(dtype).view(-1, 1, 1))
            if self.bias is not None:
                out.add_(self.bias.to(dtype).view(-1, 1, 1))
        return out.to(x.dtype)

    def _float_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.float()

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}, ' + super().extra_repr())

"""Quantized layers that keep the float layer's parameter names.

Each wrapper subclasses the float layer (``weight`` and ``bias`` stay where a float
checkpoint expects them) and adds quantizer submodules, whose buffers are the only
new state-dict keys. All quantizers follow the global mode switch
(:func:`igq_plugin.quant.quant_mode`); in ``FLOAT`` mode every wrapper computes
exactly what the float layer computes.

In ``CALIBRATE`` mode each wrapper records, on its activation quantizers, the cost
of the operation that consumes the quantized tensor
(:meth:`~igq_plugin.quantizers.ActivationQuantizer.record_cost`) for the BOP cost model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.mode import QuantMode
from ..quantizers import DEFAULT_PERCENTILES, ActivationQuantizer, WeightQuantizer


def _record_cost(quantizer: nn.Module, macs: int, out_elements: int, other_bits: int) -> None:
    if isinstance(quantizer, ActivationQuantizer):  # not an nn.Identity placeholder
        quantizer.record_cost(macs, out_elements, other_bits)


class WeightQuantizedLayer:
    """Marks a layer with weight quantizers to fit when calibration is finalized."""

    def finalize_calibration(self) -> None:
        """Fit the weight quantizer(s) on the current float weights."""
        raise NotImplementedError


def fill_fold_padding(x: torch.Tensor, token: torch.Tensor | None) -> torch.Tensor:
    """``x`` ``[..., C]`` with every all-zero token replaced by ``token`` ``[C]`` (``x``
    itself when ``token`` is ``None``).

    A LayerNorm output is never exactly 0 in every channel; a token that is was padded
    after the folded LayerNorm (Swin's windows) and stands for 0 in the unfolded input,
    i.e. for ``token = -b`` after the fold (:mod:`igq_plugin.nn.reparam`).
    """
    if token is None:
        return x
    padded = (x == 0).all(dim=-1, keepdim=True)
    return torch.where(padded, token.to(x.dtype), x)


class QuantLinear(WeightQuantizedLayer, nn.Linear):
    """``nn.Linear`` with per-channel weight and grouped input-activation quantizers.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        w_bits: weight bit-width.
        input_quantizer: quantizer of the input ``[B', ..., in_features]``
            (``nn.Identity`` when ``None``).
        output_quantizer: optional quantizer of the output (e.g. Q/K/V operands).
        weight_percentiles: clipping percentiles searched per weight channel.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 w_bits: int = 8, input_quantizer: nn.Module | None = None,
                 output_quantizer: nn.Module | None = None,
                 weight_percentiles=DEFAULT_PERCENTILES, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight_quantizer = WeightQuantizer(w_bits, out_features, weight_percentiles)
        self.input_quantizer = input_quantizer if input_quantizer is not None else nn.Identity()
        if output_quantizer is not None:
            self.output_quantizer = output_quantizer
        # RepQ-ViT's fold (``nn.reparam``): the token that stands for a zero-padded one
        self.register_buffer('fold_padding', None, persistent=False)

    @classmethod
    def from_float(cls, linear: nn.Linear, **kwargs) -> 'QuantLinear':
        """Wrap ``linear``, sharing its parameters (no copy)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.train(linear.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B', ..., in_features]`` -> ``[B', ..., out_features]``."""
        x = fill_fold_padding(x, self.fold_padding)
        tokens = x.numel() // self.in_features
        _record_cost(self.input_quantizer, tokens * self.in_features * self.out_features,
                     tokens * self.out_features, self.weight_quantizer.bits)
        out = F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)
        output_quantizer = getattr(self, 'output_quantizer', None)
        return out if output_quantizer is None else output_quantizer(out)

    def finalize_calibration(self) -> None:
        """Fit the weight quantizer; finalize the activation quantizers."""
        self.weight_quantizer.fit(self.weight)


class QuantConv2d(WeightQuantizedLayer, nn.Conv2d):
    """``nn.Conv2d`` with per-output-channel weight and grouped input quantizers.

    The input quantizer sees ``[B, C_in, H, W]`` (``channel_dim=1``).
    """

    def __init__(self, *args, w_bits: int = 8, input_quantizer: nn.Module | None = None,
                 weight_percentiles=DEFAULT_PERCENTILES, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = WeightQuantizer(w_bits, self.out_channels, weight_percentiles)
        self.input_quantizer = input_quantizer if input_quantizer is not None else nn.Identity()

    @classmethod
    def from_float(cls, conv: nn.Conv2d, **kwargs) -> 'QuantConv2d':
        """Wrap ``conv``, sharing its parameters (no copy)."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
                    **kwargs)
        layer.weight = conv.weight
        layer.bias = conv.bias
        layer.train(conv.training)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, C_in, H, W]`` -> ``[B, C_out, H', W']``."""
        weight = self.weight_quantizer(self.weight)
        out = self._conv_forward(self.input_quantizer(x), weight, self.bias)
        _record_cost(self.input_quantizer, out.numel() * self.weight[0].numel(), out.numel(),
                     self.weight_quantizer.bits)
        return out

    def finalize_calibration(self) -> None:
        """Fit the weight quantizer."""
        self.weight_quantizer.fit(self.weight)


class QKVQuantizer(nn.Module):
    """Quantizes the Q, K and V operands produced by a fused ``qkv`` Linear.

    The ``qkv`` output ``[B', N, 3C]`` is split into Q, K and V (``[B', N, C]`` each,
    all heads), each quantized with its own channel quantizer. Scaling Q by
    ``head_dim ** -0.5`` afterwards commutes with quantization up to the scale.

    Args:
        q, k, v: channel activation quantizers over ``C`` channels.
        num_heads: attention heads (for the cost of ``q @ k^T``).
    """

    def __init__(self, q: ActivationQuantizer, k: ActivationQuantizer, v: ActivationQuantizer,
                 num_heads: int = 1):
        super().__init__()
        self.q, self.k, self.v = q, k, v
        self.num_heads = num_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """``qkv``: ``[B', N, 3C]`` -> same shape.

        Each operand follows its own quantizer's mode: the sensitivity search
        quantizes Q, K or V alone.
        """
        if all(m.mode is QuantMode.FLOAT for m in (self.q, self.k, self.v)):
            return qkv
        q, k, v = qkv.chunk(3, dim=-1)  # [B', N, C] each
        windows, channels = qkv.shape[0], q.shape[-1]
        tokens = q.numel() // (windows * channels)
        score_macs = windows * tokens * tokens * channels  # q @ k^T, all heads
        scores = windows * self.num_heads * tokens * tokens
        _record_cost(self.q, score_macs, scores, self.k.bits)
        _record_cost(self.k, score_macs, scores, self.q.bits)
        _record_cost(self.v, score_macs, windows * tokens * channels, self.q.bits)  # attn @ v
        return torch.cat([self.q(q), self.k(k), self.v(v)], dim=-1)

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}'


class QuantSoftmax(nn.Softmax):
    """``nn.Softmax`` whose output (the attention map) is quantized by row groups.

    Args:
        dim: softmax dimension (must be the last, ``-1``).
        quantizer: a ``kind='softmax'`` activation quantizer.
        value_dim: per-head dimension of V, for the cost of ``attn @ v``.
    """

    def __init__(self, dim: int = -1, *, quantizer: ActivationQuantizer, value_dim: int = 0):
        super().__init__(dim=dim)
        if dim != -1:
            raise ValueError(f'QuantSoftmax needs dim=-1 (rows of the attention map); got {dim}')
        self.quantizer = quantizer
        self.value_dim = value_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: attention logits ``[B', heads, N, N]`` -> quantized probabilities."""
        attn = super().forward(x)
        rows = attn.numel() // attn.shape[-1]
        _record_cost(self.quantizer, rows * attn.shape[-1] * self.value_dim,
                     rows * self.value_dim, self.quantizer.bits)
        return self.quantizer(attn)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, value_dim={self.value_dim}'


# The wrappers a conversion creates (the float layers they replace are in .convert).
QUANTIZED_TYPES = (QuantLinear, QuantConv2d, QuantSoftmax)

"""``torch.nn.MultiheadAttention`` as explicit, quantizable self-attention.

Used by mmcv's ``MultiheadAttention`` (mmseg's ``VisionTransformer``). The fused input
projection is a parameter (``in_proj_weight``, ``[3C, C]``), not a Linear, so this
adapter adds its quantizers itself: the projection's input (channels of ``x``), its
weight (per output channel) and the Q/K/V operands; ``out_proj`` is a Linear and is
converted like any other. Parameter names are unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.layers import QKVQuantizer, WeightQuantizedLayer
from ..quantizers import WeightQuantizer
from ..nn.attention import AttentionAdapter, quantizers_active


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of the same values (mmcv passes ``query``,
    ``key`` and ``value`` of self-attention as three transposed views)."""
    if a is b:
        return True
    if a.shape != b.shape or a.stride() != b.stride():
        return False
    try:
        return a.data_ptr() == b.data_ptr()
    except RuntimeError:
        # a tensor traced by torch.export (ONNX export) has no storage to compare: the
        # same views of one tensor are taken for self-attention, as in the eager runs
        return True


class QuantMultiheadAttention(WeightQuantizedLayer):
    """Mixin over ``nn.MultiheadAttention``: explicit self-attention while quantizers
    are active; the float module's own forward otherwise."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        """``query``/``key``/``value``: ``[N, B, C]`` (``[B, N, C]`` if ``batch_first``)."""
        if not quantizers_active(self):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        self._check_supported(query, key, value, key_padding_mask, attn_mask, is_causal)
        x = query if self.batch_first else query.transpose(0, 1)  # [B, N, C]
        batch, tokens, channels = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        self.in_proj_input_quantizer.record_cost(
            batch * tokens * channels * 3 * channels, batch * tokens * 3 * channels,
            self.in_proj_weight_quantizer.bits)
        qkv = F.linear(self.in_proj_input_quantizer(x),
                       self.in_proj_weight_quantizer(self.in_proj_weight), self.in_proj_bias)
        qkv = self.qkv_quantizer(qkv)  # [B, N, 3C]
        q, k, v = qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * head_dim ** -0.5) @ k.transpose(-2, -1)  # [B, heads, N, N]
        attn = F.dropout(self.softmax(attn), p=self.dropout, training=self.training)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, channels)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn

    def _check_supported(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        unsupported = [label for label, bad in (
            ('cross-attention (key/value differ from query)',
             not (_same_tensor(query, key) and _same_tensor(key, value))),
            ('key_padding_mask', key_padding_mask is not None),
            ('attn_mask', attn_mask is not None), ('is_causal', bool(is_causal)),
            ('separate q/k/v projections', not self._qkv_same_embed_dim),
            ('bias_k/bias_v', self.bias_k is not None), ('add_zero_attn', self.add_zero_attn))
            if bad]
        if unsupported:
            raise NotImplementedError(f'quantized nn.MultiheadAttention supports plain '
                                      f'self-attention only; got {unsupported}')

    def finalize_calibration(self) -> None:
        """Fit the input projection's weight quantizer."""
        self.in_proj_weight_quantizer.fit(self.in_proj_weight)


class MultiheadAttentionAdapter(AttentionAdapter):
    """``torch.nn.MultiheadAttention`` (plain self-attention)."""

    name = 'torch.MultiheadAttention'
    mixin = QuantMultiheadAttention
    adds_quantizers = True

    def matches(self, module: nn.Module) -> bool:
        return type(module) is nn.MultiheadAttention

    def add_quantizers(self, module: nn.Module, config, bits: int | None, name: str,
                       post_norm: bool = False) -> None:
        """Quantizers of the fused input projection; ``out_proj`` and ``softmax`` are
        converted generically.

        Args:
            module: the adapted attention.
            config: the :class:`~igq_plugin.nn.QuantConfig`.
            bits: bit-width override (first layers), else the config's.
            name: the module's name, for the quantizers' names.
            post_norm: the input is a LayerNorm's output (``method='repq'`` folds it
                into ``in_proj_weight`` / ``in_proj_bias``).
        """
        channels = module.embed_dim
        a_bits, w_bits = bits or config.a_bits, bits or config.w_bits
        module.in_proj_input_quantizer = config.activation_quantizer(
            a_bits, channels, name=f'{name}.in_proj_input_quantizer', post_norm=post_norm)
        module.in_proj_weight_quantizer = WeightQuantizer(w_bits, 3 * channels,
                                                          config.weight_percentiles)
        module.qkv_quantizer = QKVQuantizer(
            *(config.activation_quantizer(a_bits, channels, name=f'{name}.qkv_quantizer.{part}')
              for part in 'qkv'), num_heads=module.num_heads) if config.attention else nn.Identity()
        device = module.in_proj_weight.device
        for attr in ('in_proj_input_quantizer', 'in_proj_weight_quantizer', 'qkv_quantizer'):
            getattr(module, attr).to(device)

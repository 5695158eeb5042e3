"""timm's ViT / DeiT ``Attention`` and Swin ``WindowAttention``.

- ``timm.layers.attention.Attention`` calls ``F.scaled_dot_product_attention`` (its
  default) or ``Tensor.softmax``: neither is a module the converter can wrap. The
  explicit path below is timm's own non-fused path with ``self.softmax`` in place of
  the tensor method.
- ``timm.models.swin_transformer.WindowAttention`` already has an ``nn.Softmax`` on its
  non-fused path; the adapter takes that path whenever a quantizer is active.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from ..nn.attention import AttentionAdapter, quantizers_active


class TimmAdapter(AttentionAdapter):
    """Matches exactly the timm class ``module_name.class_name`` (if timm is loaded)."""

    module_name = ''
    class_name = ''

    def matches(self, module: nn.Module) -> bool:
        loaded = sys.modules.get(self.module_name)
        cls = getattr(loaded, self.class_name, None) if loaded is not None else None
        return cls is not None and type(module) is cls


class ExplicitTimmAttention:
    """Mixin over timm's ``Attention``: explicit attention while quantizers are active."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """``x``: ``[B, N, C]`` -> ``[B, N, C_out]``."""
        if not quantizers_active(self):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if is_causal:
            raise NotImplementedError('IGQ quantization of causal timm attention is not '
                                      'supported (vision transformers are not causal)')
        batch, tokens, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, 'gate', None) is not None else None
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, head_dim] each
        q, k = self.q_norm(q), self.k_norm(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class TimmAttentionAdapter(TimmAdapter):
    """timm ``Attention`` (ViT, DeiT): adds ``softmax``, explicit path when quantized."""

    name = 'timm.Attention'
    mixin = ExplicitTimmAttention
    module_name, class_name = 'timm.layers.attention', 'Attention'


class ExplicitTimmWindowAttention:
    """Mixin over timm's ``WindowAttention``: the non-fused path while quantizers are
    active (its ``self.softmax`` is then the quantized one)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B * windows, N, C]`` -> same shape."""
        if not quantizers_active(self) or not self.fused_attn:
            return super().forward(x, mask)
        self.fused_attn = False
        try:
            return super().forward(x, mask)
        finally:
            self.fused_attn = True


class TimmWindowAttentionAdapter(TimmAdapter):
    """timm Swin ``WindowAttention``."""

    name = 'timm.WindowAttention'
    mixin = ExplicitTimmWindowAttention
    module_name, class_name = 'timm.models.swin_transformer', 'WindowAttention'

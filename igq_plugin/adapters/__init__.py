"""Architecture adapters: where an attention module's operands and softmax are.

Model conversion (:func:`igq_plugin.nn.quantize_model`) swaps float ``Linear``,
``Conv2d`` and ``Softmax`` modules for quantized wrappers. Attention modules that
compute their softmax with a fused kernel or a tensor method expose none of these;
an adapter turns such a module, in place, into an explicit version of itself: the same
parameters under the same names, the float module's own ``forward`` while every
quantizer inside it is in float mode (bit-identical), and an explicit path otherwise,
with ``q @ k^T``, a ``softmax`` submodule and ``attn @ v`` that the quantizers see.

Adapters match on the class, found through ``sys.modules``: a model can only hold a
timm module if timm is already imported, so the core imports no model library.
"""
from .base import AttentionAdapter, adapt_attention, find_adapter, quantizers_active
from .timm_attention import TimmAttentionAdapter, TimmWindowAttentionAdapter
from .torch_mha import MultiheadAttentionAdapter, QuantMultiheadAttention

ADAPTERS: tuple[AttentionAdapter, ...] = (TimmAttentionAdapter(), TimmWindowAttentionAdapter(),
                                          MultiheadAttentionAdapter())

__all__ = ['ADAPTERS', 'AttentionAdapter', 'adapt_attention', 'find_adapter',
           'quantizers_active', 'TimmAttentionAdapter', 'TimmWindowAttentionAdapter',
           'MultiheadAttentionAdapter', 'QuantMultiheadAttention']

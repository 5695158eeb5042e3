"""Architecture adapters: explicit attention for timm's ViT / Swin attention and
torch's ``nn.MultiheadAttention``.

Importing this package registers its adapters with
:func:`igq_plugin.nn.attention.register_adapter` (``igq_plugin`` imports it), so that
:func:`~igq_plugin.nn.quantize_model` applies them by default. Adapters match on the
class, found through ``sys.modules``: a model can only hold a timm module if timm is
already imported, so nothing here imports a model library.
"""
from ..nn.attention import register_adapter
from .timm_attention import TimmAttentionAdapter, TimmWindowAttentionAdapter
from .torch_mha import MultiheadAttentionAdapter, QuantMultiheadAttention

ADAPTERS = tuple(register_adapter(adapter) for adapter in (
    TimmAttentionAdapter(), TimmWindowAttentionAdapter(), MultiheadAttentionAdapter()))

__all__ = ['ADAPTERS', 'TimmAttentionAdapter', 'TimmWindowAttentionAdapter',
           'MultiheadAttentionAdapter', 'QuantMultiheadAttention']

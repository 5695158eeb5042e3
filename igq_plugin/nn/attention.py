"""Attention adapters: the protocol, the explicit-subclass mechanism and the registry.

Model conversion swaps float ``Linear``, ``Conv2d`` and ``Softmax`` modules for
quantized wrappers. Attention modules that compute their softmax with a fused kernel
or a tensor method expose none of these; an adapter turns such a module, in place,
into an explicit version of itself: the same parameters under the same names, the
float module's own ``forward`` while every quantizer inside it is in float mode
(bit-identical), and an explicit path otherwise, with ``q @ k^T``, a ``softmax``
submodule and ``attn @ v`` that the quantizers see.

The concrete adapters live in :mod:`igq_plugin.adapters`, which registers them here
(:func:`register_adapter`) when ``igq_plugin`` is imported; conversion asks
:func:`registered_adapters`, so this package never imports a model library.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

from ..quant.mode import ModeSwitchMixin, QuantMode


def quantizers_active(module: nn.Module) -> bool:
    """Whether any quantizer inside ``module`` is not in float mode."""
    return any(isinstance(m, ModeSwitchMixin) and m.mode is not QuantMode.FLOAT
               for m in module.modules())


_EXPLICIT_CLASSES: dict[tuple[type, type], type] = {}


def explicit_class(mixin: type, cls: type) -> type:
    """The subclass of ``cls`` with ``mixin`` first in its MRO (made once per pair).

    The adapted module keeps its ``__dict__`` (parameters, buffers, children, flags)
    and only changes class, the mechanism ``torch.nn.utils.parametrize`` uses; so
    ``isinstance(module, cls)`` still holds and state-dict names do not change.
    """
    key = (mixin, cls)
    if key not in _EXPLICIT_CLASSES:
        _EXPLICIT_CLASSES[key] = type(f'IGQ{cls.__name__}', (mixin, cls),
                                      {'__module__': mixin.__module__})
    return _EXPLICIT_CLASSES[key]


class AttentionAdapter:
    """Makes one kind of attention module explicit for quantization.

    Subclasses set :attr:`name` and :attr:`mixin` and implement :meth:`matches`.
    ``mixin`` overrides ``forward``: it must call ``super().forward`` when
    :func:`quantizers_active` is false.
    """

    name = 'attention'
    mixin: type = object
    adds_quantizers = False  # True: :meth:`add_quantizers` quantizes non-Linear parameters

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is the (unadapted) class this adapter handles."""
        raise NotImplementedError

    def adapt(self, module: nn.Module) -> None:
        """Turn ``module`` into its explicit subclass, in place."""
        module.__class__ = explicit_class(self.mixin, type(module))
        if not isinstance(getattr(module, 'softmax', None), nn.Softmax):
            module.softmax = nn.Softmax(dim=-1)

    def add_quantizers(self, module: nn.Module, config, bits: int | None, name: str,
                       post_norm: bool = False) -> None:
        """Add quantizers the generic conversion cannot (see ``adds_quantizers``);
        ``post_norm``: the module's input is a LayerNorm's output."""
        raise NotImplementedError


def find_adapter(module: nn.Module, adapters: Iterable[AttentionAdapter]) -> AttentionAdapter | None:
    """The first adapter that matches ``module``, if any."""
    return next((a for a in adapters if a.matches(module)), None)


def adapt_attention(model: nn.Module, adapters: Iterable[AttentionAdapter],
                    include=lambda name: True) -> dict[str, AttentionAdapter]:
    """Adapt every matching attention module of ``model`` in place.

    Returns:
        ``{module name: adapter}`` of the adapted modules.
    """
    adapters = tuple(adapters)
    adapted = {}
    for name, module in list(model.named_modules()):
        adapter = find_adapter(module, adapters) if include(name) else None
        if adapter is not None:
            adapter.adapt(module)
            adapted[name] = adapter
    return adapted


_REGISTRY: list[AttentionAdapter] = []


def register_adapter(adapter: AttentionAdapter) -> AttentionAdapter:
    """Add ``adapter`` to those :func:`~igq_plugin.nn.quantize_model` applies by default
    (once per adapter class; a later registration of the same class replaces it)."""
    if not isinstance(adapter, AttentionAdapter):
        raise TypeError(f'register_adapter needs an AttentionAdapter instance; got '
                        f'{type(adapter).__name__}')
    _REGISTRY[:] = [a for a in _REGISTRY if type(a) is not type(adapter)] + [adapter]
    return adapter


def registered_adapters() -> tuple[AttentionAdapter, ...]:
    """The adapters conversion applies by default, in registration order."""
    return tuple(_REGISTRY)

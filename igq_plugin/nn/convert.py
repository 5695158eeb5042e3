"""Model conversion: the one path that turns a float model into a quantized one.

:func:`quantize_model` converts a model (or named parts of it) in place: attention
modules are made explicit by their registered architecture adapter
(:mod:`igq_plugin.nn.attention`), then every ``nn.Linear``, ``nn.Conv2d`` and
``nn.Softmax`` is swapped for its quantized wrapper (parameter names are kept)
according to a :class:`~igq_plugin.nn.config.QuantConfig`, and the model gets its
life-cycle record and forward guard (:mod:`.lifecycle`).
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import torch
from torch import nn

from ..quantizers import FixedRangeQuantizer
from .attention import AttentionAdapter, adapt_attention, registered_adapters
from .config import QuantConfig
from .layers import (QUANTIZED_TYPES, QKVQuantizer, QuantConv2d, QuantLinear, QuantSoftmax,
                     WeightQuantizedLayer)
from .lifecycle import (RECORD_ATTRIBUTE, ForwardGuard, QuantizationRecord,
                        quantization_record)
from .model_quantizers import activation_quantizers
from .reparam import apply_folds, post_norm_linears

logger = logging.getLogger('igq_plugin')


# Float layer classes converted, by the wrapper they become. Subclasses that only add
# behaviour irrelevant to quantization (e.g. mmcv's empty-tensor ``Linear``) are named by
# the caller (``float_layers``); other subclasses are left alone, since a custom
# ``forward`` (e.g. adaptive padding) would be lost by the swap.
FLOAT_LINEAR_TYPES = frozenset({nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear})
FLOAT_CONV_TYPES = frozenset({nn.Conv2d})


def convertible_types(float_layers: Iterable[type] = ()) -> tuple[frozenset, frozenset]:
    """``(Linear classes, Conv2d classes)`` converted: the standard ones plus
    ``float_layers``, subclasses whose ``forward`` is equivalent to their base's."""
    linear, conv = set(FLOAT_LINEAR_TYPES), set(FLOAT_CONV_TYPES)
    for cls in float_layers:
        if isinstance(cls, type) and issubclass(cls, nn.Linear):
            linear.add(cls)
        elif isinstance(cls, type) and issubclass(cls, nn.Conv2d):
            conv.add(cls)
        else:
            raise TypeError(f'float_layers: {cls!r} is neither an nn.Linear nor an nn.Conv2d '
                            f'subclass')
    return frozenset(linear), frozenset(conv)


def _parent_and_attr(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition('.')
    return (root.get_submodule(parent_name) if parent_name else root), attr


def _is_fused_qkv(name: str, module: nn.Linear, parent: nn.Module) -> bool:
    return (name.rpartition('.')[2] == 'qkv' and module.out_features % 3 == 0
            and hasattr(parent, 'num_heads'))


def _value_dim(parent: nn.Module) -> int:
    """Per-head V dimension of the attention module holding a softmax (0: unknown)."""
    qkv = getattr(parent, 'qkv', None)
    heads = getattr(parent, 'num_heads', None)
    if isinstance(qkv, nn.Linear) and heads:
        return qkv.out_features // 3 // heads
    return int(getattr(parent, 'head_dim', 0) or 0)


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(p == '' or name == p or name.startswith(p + '.') for p in prefixes)


def quantize_modules(model: nn.Module, config: QuantConfig, first_layers: Iterable[str] = (),
                     exclude: Iterable[str] = (), include: Iterable[str] = ('',),
                     adapters: Iterable[AttentionAdapter] | None = None,
                     post_norm: Iterable[str] = (), float_layers: Iterable[type] = ()
                     ) -> list[str]:
    """Swap the float layers of ``model`` for quantized wrappers, in place.

    Attention modules matched by ``adapters`` are first made explicit. Use
    :func:`quantize_model` for a whole model (it adds the life-cycle record and guard).

    Args:
        model: the module tree to convert.
        config: quantization settings.
        first_layers: names (relative to ``model``) of layers kept at
            ``config.first_layer_bits`` (the patch embedding).
        exclude: names of modules (and their subtrees) to leave in float.
        include: name prefixes of the parts to convert (``''``: all of ``model``).
        adapters: architecture adapters to apply (``None``: every registered one).
        post_norm: names of Linears whose input is a LayerNorm's output
            (:func:`~igq_plugin.nn.reparam.post_norm_linears`).
        float_layers: Linear/Conv2d subclasses to convert too (see
            :func:`convertible_types`).

    Returns:
        Names of the converted layers.
    """
    first_layers, exclude, include = set(first_layers), tuple(exclude), tuple(include)
    post_norm = set(post_norm)
    types = convertible_types(float_layers)
    adapters = registered_adapters() if adapters is None else tuple(adapters)
    selected = lambda name: _under(name, include) and not _under(name, exclude)  # noqa: E731
    converted = []
    for name, adapter in adapt_attention(model, adapters, include=selected).items():
        if adapter.adds_quantizers:  # parameters that are not Linear layers (fused in_proj)
            bits = config.first_layer_bits if name in first_layers else None
            adapter.add_quantizers(model.get_submodule(name), config, bits, name,
                                   post_norm=name in post_norm)
            converted.append(name)
    for name, module in list(model.named_modules()):
        if not name or not selected(name) or _has_quantized_ancestor(model, name):
            continue
        parent, attr = _parent_and_attr(model, name)
        bits = config.first_layer_bits if name in first_layers else None
        new = _convert_one(name, module, parent, config, types, bits, name in post_norm)
        if new is not None:
            setattr(parent, attr, new)
            converted.append(name)
    return converted


def _has_quantized_ancestor(model: nn.Module, name: str) -> bool:
    parts = name.split('.')
    return any(isinstance(model.get_submodule('.'.join(parts[:i])), QUANTIZED_TYPES)
               for i in range(1, len(parts)))


def _convert_one(name: str, module: nn.Module, parent: nn.Module, config: QuantConfig,
                 types: tuple[frozenset, frozenset], bits: int | None,
                 post_norm: bool = False) -> nn.Module | None:
    w_bits = bits or config.w_bits
    if bits and 'first-weights' in config.repq_published:  # RepQ-ViT: only its input at 8
        w_bits = config.w_bits
    a_bits = bits or config.a_bits
    linear_types, conv_types = types
    if type(module) in linear_types:
        output_quantizer = None
        if config.attention and _is_fused_qkv(name, module, parent):
            channels = module.out_features // 3
            output_quantizer = QKVQuantizer(
                *(config.activation_quantizer(a_bits, channels,
                                              name=f'{name}.output_quantizer.{part}')
                  for part in 'qkv'), num_heads=parent.num_heads)
        new = QuantLinear.from_float(
            module, w_bits=w_bits, output_quantizer=output_quantizer,
            input_quantizer=config.activation_quantizer(a_bits, module.in_features,
                                                        name=f'{name}.input_quantizer',
                                                        post_norm=post_norm),
            weight_percentiles=config.weight_percentiles)
    elif type(module) in conv_types:
        new = QuantConv2d.from_float(
            module, w_bits=w_bits,
            input_quantizer=config.activation_quantizer(a_bits, module.in_channels,
                                                        channel_dim=1,
                                                        name=f'{name}.input_quantizer'),
            weight_percentiles=config.weight_percentiles)
    elif type(module) is nn.Softmax and config.attention and module.dim in (-1, 3):
        new = QuantSoftmax(-1, quantizer=config.activation_quantizer(
            a_bits, None, 'softmax', name=f'{name}.quantizer'), value_dim=_value_dim(parent))
    else:
        return None
    # A runner may have moved the model to a GPU before conversion: the new quantizer
    # buffers follow the float layer's device.
    reference = next(module.parameters(), None)
    if reference is not None:
        new.to(reference.device)
    return new


def _first_layer(model: nn.Module, include: Sequence[str]) -> str | None:
    """The first Conv2d/Linear in module order inside ``include`` (the patch embedding
    of the vision transformers this package supports)."""
    for name, module in model.named_modules():
        if name and _under(name, include) and isinstance(module, (nn.Conv2d, nn.Linear)):
            return name
    return None


def quantize_model(model: nn.Module, config: QuantConfig, *, include: Sequence[str] = ('',),
                   exclude: Sequence[str] = (), first_layers: Sequence[str] | None = None,
                   input_range: tuple[torch.Tensor, torch.Tensor] | None = None,
                   instance_roots: Sequence[str] = ('',),
                   adapters: Iterable[AttentionAdapter] | None = None,
                   float_layers: Iterable[type] = ()) -> QuantizationRecord:
    """Convert ``model`` for quantization, in place; the entry point of every caller.

    What is quantized (docs/method.md, section 2): the input of every Linear and
    Conv2d (activation quantizer of ``config.method``), their weights per output
    channel, the Q/K/V operands and the softmax attention (``config.attention``), and
    the first layer (weights and input) at ``config.first_layer_bits``.

    Args:
        model: a float model (e.g. a timm ViT, or an mm detector).
        config: quantization settings.
        include: name prefixes of the parts to convert (``('',)``: the whole model).
        exclude: names of modules to leave in float (e.g. a classifier head).
        first_layers: layers kept at ``first_layer_bits``; ``None``: the first
            Conv2d/Linear of the converted parts (the patch embedding).
        input_range: ``([C], [C])`` fixed per-channel range of the first layer's input
            (normalised pixels); ``None`` calibrates it like any input.
        instance_roots: modules (by name) whose forward receives whole images: their
            batch size tells the quantizers below them which items form one image.
        adapters: architecture adapters (``None``: every registered one,
            :func:`~igq_plugin.nn.attention.registered_adapters`).
        float_layers: Linear/Conv2d subclasses whose ``forward`` is their base's, to
            convert too (e.g. mmcv's wrappers, which only add empty-tensor handling).

    Returns:
        The model's :class:`~igq_plugin.nn.lifecycle.QuantizationRecord`; the model is
        ``UNCALIBRATED`` until :func:`igq_plugin.calibrate_model` runs.

    Raises:
        TypeError: ``config`` is not a :class:`QuantConfig`.
        ValueError: the model is already converted, a named part does not exist, or
            nothing in it can be quantized.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.Flatten(),
        ...                           torch.nn.Linear(8, 2))
        >>> record = quantize_model(net, QuantConfig(method='per-tensor'))
        >>> record.layers, record.first_layers
        (['0', '2'], ('0',))
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(f'config must be an igq_plugin.QuantConfig; got {type(config).__name__}')
    if quantization_record(model) is not None:
        raise ValueError(f'{type(model).__name__} is already quantized: convert a float model')
    modules = dict(model.named_modules())
    for name in (*include, *exclude, *instance_roots, *(first_layers or ())):
        if name not in modules:
            raise ValueError(f'{type(model).__name__} has no submodule {name!r}')
    if first_layers is None:
        first = _first_layer(model, include)
        first_layers = () if first is None else (first,)
    first_layers = tuple(first_layers)
    folds = {}
    if config.folds:  # the post-LayerNorm inputs RepQ-ViT's reparameterization folds
        folds = {linear: norm for linear, norm in post_norm_linears(model).items()
                 if _under(linear, include) and not _under(linear, exclude)
                 and linear not in first_layers}
    converted = quantize_modules(model, config, first_layers, exclude, include, adapters,
                                 post_norm=folds, float_layers=float_layers)
    if not converted:
        raise ValueError(f'nothing to quantize in {type(model).__name__} (parts {include}): '
                         f'no Linear, Conv2d or Softmax found')
    if input_range is not None:
        _fix_input_range(model, first_layers, config, input_range)
    _warn_float_attention(model, config)
    record = QuantizationRecord(config=config, layers=converted, first_layers=first_layers,
                                folds={k: v for k, v in folds.items() if k in converted},
                                include=tuple(include), exclude=tuple(exclude),
                                instance_roots=tuple(instance_roots))
    setattr(model, RECORD_ATTRIBUTE, record)
    for name in instance_roots:
        modules[name].register_forward_pre_hook(ForwardGuard(record, model))
    return record


def _fix_input_range(model: nn.Module, first_layers: Sequence[str], config: QuantConfig,
                     input_range) -> None:
    if len(first_layers) != 1 or not isinstance(model.get_submodule(first_layers[0]),
                                                QuantConv2d):
        raise ValueError(f'input_range needs one first layer that is a Conv2d (the patch '
                         f'embedding); got first_layers={first_layers}')
    name = first_layers[0]
    embed = model.get_submodule(name)
    quantizer = FixedRangeQuantizer(config.first_layer_bits, embed.in_channels, channel_dim=1,
                                    name=f'{name}.input_quantizer')
    quantizer.set_range(*(torch.as_tensor(r).to(embed.weight.device) for r in input_range))
    embed.input_quantizer = quantizer.to(embed.weight.device)


def _warn_float_attention(model: nn.Module, config: QuantConfig) -> None:
    """Attention that stays float although ``config.attention`` asks for it is named."""
    if not config.attention:
        return
    missed = [name for name, module in model.named_modules()
              if hasattr(module, 'num_heads') and not isinstance(module, QKVQuantizer)
              and not any(isinstance(m, QuantSoftmax) for m in module.modules())]
    if missed:
        logger.warning('igq_plugin: %d attention module(s) keep a float softmax (no adapter '
                       'for their class, e.g. %s at %s)', len(missed),
                       type(model.get_submodule(missed[0])).__name__, missed[0])


def finalize_calibration(model: nn.Module) -> None:
    """Turn activation statistics into parameters, fold RepQ-ViT's post-LayerNorm
    scales into the weights (``method='repq'``), then fit the weight quantizers.

    Raises:
        ValueError: when an activation quantizer observed no batch.
    """
    for quantizer in activation_quantizers(model).values():
        quantizer.finalize()
        quantizer.reset_statistics()
    apply_folds(model)  # changes weights: before they are fitted
    for module in model.modules():
        if isinstance(module, WeightQuantizedLayer):
            module.finalize_calibration()

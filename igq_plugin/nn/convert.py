"""Model conversion: the one path that turns a float model into a quantized one.

:func:`quantize_model` converts a model (or named parts of it) in place: attention
modules are made explicit by their architecture adapter (:mod:`igq_plugin.adapters`),
then every ``nn.Linear``, ``nn.Conv2d`` and ``nn.Softmax`` is swapped for its quantized
wrapper (parameter names are kept) according to a :class:`QuantConfig`, and the model
gets its life-cycle record and forward guard (:mod:`.lifecycle`). The other helpers
drive calibration and the group-size allocation through the module tree.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from ..adapters import ADAPTERS, AttentionAdapter, adapt_attention
from ..grouping import check_assignment, check_distance
from ..quant import (DEFAULT_CANDIDATES, DEFAULT_PERCENTILES, GROUP_BOUNDS, REPQ_PERCENTILES,
                     ActivationQuantizer,
                     FixedRangeQuantizer, IGQQuantizer, build_activation_quantizer, check_bits,
                     check_method)
from .layers import QKVQuantizer, QuantConv2d, QuantLinear, QuantSoftmax, WeightQuantizedLayer
from .lifecycle import (RECORD_ATTRIBUTE, ForwardGuard, QuantizationRecord,
                        quantization_record)
from .reparam import apply_folds, post_norm_linears

logger = logging.getLogger('igq_plugin')


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    Attributes:
        method: activation quantizer: ``per-tensor``, ``repq`` (RepQ-ViT, the peer:
            per-tensor with percentile ranges, post-LayerNorm scales folded into the
            weights, log2 softmax), ``static-group``, ``igq-fixed``, ``igq`` (with
            allocation) or ``upper-bound``.
        w_bits: weight bit-width (per output channel).
        a_bits: activation bit-width.
        groups: G for ``static-group`` / ``igq-fixed``, and ``G_avg`` of the allocation
            budget for ``igq``. Capped per layer at the layer's channel count (e.g. the
            3 channels of an image input) [choice].
        candidates: group counts calibrated for the allocation.
        distance: ``'l2'`` or ``'l1'`` range distance of the assignment.
        bounds: IGQ group quantization range, ``'envelope'`` (default), ``'mean'`` or
            ``'mse'`` (see :class:`~igq_plugin.quant.IGQQuantizer`).
        assignment: IGQ run-time group choice, ``'cover'`` (default) or
            ``'nearest'`` (see :class:`~igq_plugin.quant.IGQQuantizer`).
        attention: also quantize Q/K/V operands and the softmax attention.
        first_layer_bits: bits of the first layer's weights and input [choice: 8].
        weight_percentiles: clipping percentiles searched per weight channel;
            ``None``: the method's own (RepQ-ViT's for ``repq``, else
            :data:`~igq_plugin.quant.DEFAULT_PERCENTILES`).
    """

    method: str = 'igq'
    w_bits: int = 4
    a_bits: int = 4
    groups: int = 8
    candidates: Sequence[int] = DEFAULT_CANDIDATES
    distance: str = 'l2'
    bounds: str = 'envelope'
    assignment: str = 'cover'
    attention: bool = True
    first_layer_bits: int = 8
    weight_percentiles: Sequence[float] | None = None

    def __post_init__(self):
        check_method(self.method)
        check_bits(self.w_bits, 'w_bits')
        check_bits(self.a_bits, 'a_bits')
        check_bits(self.first_layer_bits, 'first_layer_bits')
        check_distance(self.distance)
        check_assignment(self.assignment)
        if self.bounds not in GROUP_BOUNDS:
            raise ValueError(f'bounds={self.bounds!r} is not supported: allowed are {GROUP_BOUNDS}')
        if isinstance(self.groups, bool) or not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f'groups={self.groups!r}: must be a positive integer')
        candidates = tuple(self.candidates)
        if not candidates or any(isinstance(g, bool) or not isinstance(g, int) or g < 1
                                 for g in candidates):
            raise ValueError(f'candidates={candidates!r}: must be positive integers')
        if self.method in ('igq', 'igq-fixed') and self.groups not in candidates:
            raise ValueError(f'groups={self.groups} is not one of candidates={candidates}: '
                             f'add it to candidates or choose one of them')
        object.__setattr__(self, 'candidates', candidates)
        if self.weight_percentiles is None:
            object.__setattr__(self, 'weight_percentiles', REPQ_PERCENTILES
                               if self.method == 'repq' else DEFAULT_PERCENTILES)
        object.__setattr__(self, 'weight_percentiles', tuple(self.weight_percentiles))

    def activation_quantizer(self, bits: int, channels: int | None, kind: str = 'channel',
                             channel_dim: int = -1, name: str = '',
                             post_norm: bool = False) -> ActivationQuantizer:
        """Build this config's activation quantizer for one layer named ``name``
        (``post_norm``: the input of a Linear that follows a LayerNorm)."""
        groups = self.groups if channels is None else min(self.groups, channels)
        return build_activation_quantizer(self.method, bits, channels, kind, channel_dim,
                                          groups, self.candidates, self.distance, self.bounds,
                                          self.assignment, name=name, post_norm=post_norm)

    def as_dict(self) -> dict:
        """The settings as plain values (for state files and logs)."""
        return {key: (list(value) if isinstance(value, tuple) else value)
                for key, value in self.__dict__.items()}


def check_runs(methods: Sequence[str], bits: Sequence[int], groups: int) -> None:
    """Validate every (method, W/A bits, G) combination a tool will run, up front.

    Raises:
        ValueError: as :class:`QuantConfig` does, naming the value and what is allowed.
    """
    for method in methods:
        for width in bits:
            QuantConfig(method=method, w_bits=width, a_bits=width, groups=groups)


# Float layer classes converted, by the wrapper they become. Subclasses that only add
# behaviour irrelevant to quantization (e.g. mmcv's empty-tensor ``Linear``) are
# added by :func:`register_float_layer`; other subclasses are left alone, since a
# custom ``forward`` (e.g. adaptive padding) would be lost by the swap.
FLOAT_LINEAR_TYPES: set[type] = {nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear}
FLOAT_CONV_TYPES: set[type] = {nn.Conv2d}
QUANTIZED_TYPES = (QuantLinear, QuantConv2d, QuantSoftmax)


def register_float_layer(cls: type) -> None:
    """Allow conversion of a Linear/Conv2d subclass whose ``forward`` is equivalent."""
    if issubclass(cls, nn.Linear):
        FLOAT_LINEAR_TYPES.add(cls)
    elif issubclass(cls, nn.Conv2d):
        FLOAT_CONV_TYPES.add(cls)
    else:
        raise TypeError(f'{cls.__name__} is neither an nn.Linear nor an nn.Conv2d subclass')


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
                     adapters: Iterable[AttentionAdapter] = ADAPTERS,
                     post_norm: Iterable[str] = ()) -> list[str]:
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
        adapters: architecture adapters to apply.
        post_norm: names of Linears whose input is a LayerNorm's output
            (:func:`~igq_plugin.nn.reparam.post_norm_linears`).

    Returns:
        Names of the converted layers.
    """
    first_layers, exclude, include = set(first_layers), tuple(exclude), tuple(include)
    post_norm = set(post_norm)
    adapters = tuple(adapters)
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
        new = _convert_one(name, module, parent, config, bits, name in post_norm)
        if new is not None:
            setattr(parent, attr, new)
            converted.append(name)
    return converted


def _has_quantized_ancestor(model: nn.Module, name: str) -> bool:
    parts = name.split('.')
    return any(isinstance(model.get_submodule('.'.join(parts[:i])), QUANTIZED_TYPES)
               for i in range(1, len(parts)))


def _convert_one(name: str, module: nn.Module, parent: nn.Module, config: QuantConfig,
                 bits: int | None, post_norm: bool = False) -> nn.Module | None:
    w_bits = bits or config.w_bits
    a_bits = bits or config.a_bits
    if type(module) in FLOAT_LINEAR_TYPES:
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
    elif type(module) in FLOAT_CONV_TYPES:
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
                   adapters: Iterable[AttentionAdapter] = ADAPTERS) -> QuantizationRecord:
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
        adapters: architecture adapters (default: every one this package has).

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
    if config.method == 'repq':  # the post-LayerNorm inputs RepQ-ViT folds
        folds = {linear: norm for linear, norm in post_norm_linears(model).items()
                 if _under(linear, include) and not _under(linear, exclude)
                 and linear not in first_layers}
    converted = quantize_modules(model, config, first_layers, exclude, include, adapters,
                                 post_norm=folds)
    if not converted:
        raise ValueError(f'nothing to quantize in {type(model).__name__} (parts {include}): '
                         f'no Linear, Conv2d or Softmax found')
    if input_range is not None:
        _fix_input_range(model, first_layers, config, input_range)
    _warn_float_attention(model, config)
    record = QuantizationRecord(config=config, layers=converted, first_layers=first_layers,
                                folds={k: v for k, v in folds.items() if k in converted})
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


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """All activation quantizers of ``model`` by their module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ActivationQuantizer)}


def igq_quantizers(model: nn.Module) -> dict[str, IGQQuantizer]:
    """The instance-aware group quantizers of ``model`` (the allocation's layers)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, IGQQuantizer)}


def set_num_instances(model: nn.Module, num_instances: int | None) -> None:
    """Tell every activation quantizer how many images the next batch holds."""
    for quantizer in activation_quantizers(model).values():
        quantizer.num_instances = num_instances


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


def reset_statistics(model: nn.Module) -> None:
    """Forget every recorded calibration statistic (parameters are kept)."""
    for quantizer in activation_quantizers(model).values():
        quantizer.reset_statistics()


def quantized_layer_count(model: nn.Module) -> dict[str, int]:
    """How many wrappers of each type ``model`` holds (a quick coverage check)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QUANTIZED_TYPES):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def float_layer_count(model: nn.Module) -> dict[str, int]:
    """Float ``Linear``/``Conv2d``/``Softmax`` layers (subclasses too) not wrapped."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Softmax)) and \
                not isinstance(module, QUANTIZED_TYPES):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts

"""Model conversion: replace float layers by quantized wrappers, and calibrate.

:func:`quantize_modules` swaps, in place, every ``nn.Linear``, ``nn.Conv2d`` and
``nn.Softmax`` of a module tree for its quantized wrapper (parameter names are kept)
according to a :class:`QuantConfig`. The other helpers drive calibration and the
group-size allocation through the module tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from torch import nn

from ..grouping import check_assignment, check_distance
from ..quant import (DEFAULT_CANDIDATES, DEFAULT_PERCENTILES, GROUP_BOUNDS, ActivationQuantizer,
                     IGQQuantizer, build_activation_quantizer, check_bits, check_method)
from .layers import QKVQuantizer, QuantConv2d, QuantLinear, QuantSoftmax


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    Attributes:
        method: activation quantizer: ``per-tensor``, ``static-group``, ``igq-fixed``,
            ``igq`` (with allocation) or ``upper-bound``.
        w_bits: weight bit-width (per output channel).
        a_bits: activation bit-width.
        groups: G for ``static-group`` / ``igq-fixed``, and ``G_avg`` of the allocation
            budget for ``igq``. Capped per layer at the layer's channel count (e.g. the
            3 channels of an image input) [choice].
        candidates: group counts calibrated for the allocation.
        distance: ``'l2'`` or ``'l1'`` range distance of the assignment.
        bounds: IGQ group quantization range, ``'envelope'`` (default) or
            ``'mean'`` (see :class:`~igq_plugin.quant.IGQQuantizer`).
        assignment: IGQ run-time group choice, ``'cover'`` (default) or
            ``'nearest'`` (see :class:`~igq_plugin.quant.IGQQuantizer`).
        attention: also quantize Q/K/V operands and the softmax attention.
        first_layer_bits: bits of the first layer's weights and input [choice: 8].
        weight_percentiles: clipping percentiles searched per weight channel.
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
    weight_percentiles: Sequence[float] = field(default=DEFAULT_PERCENTILES)

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
        object.__setattr__(self, 'candidates', candidates)
        object.__setattr__(self, 'weight_percentiles', tuple(self.weight_percentiles))

    def activation_quantizer(self, bits: int, channels: int | None, kind: str = 'channel',
                             channel_dim: int = -1) -> ActivationQuantizer:
        """Build this config's activation quantizer for one layer."""
        groups = self.groups if channels is None else min(self.groups, channels)
        return build_activation_quantizer(self.method, bits, channels, kind, channel_dim,
                                          groups, self.candidates, self.distance, self.bounds,
                                          self.assignment)


# Float layer classes converted, by the wrapper they become. Subclasses that only add
# behaviour irrelevant to quantization (e.g. mmcv's empty-tensor ``Linear``) are
# added by :func:`register_float_layer`; other subclasses are left alone, since a
# custom ``forward`` (e.g. adaptive padding) would be lost by the swap.
FLOAT_LINEAR_TYPES: set[type] = {nn.Linear}
FLOAT_CONV_TYPES: set[type] = {nn.Conv2d}


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
    """Per-head V dimension of an attention module holding a fused ``qkv`` Linear."""
    qkv = getattr(parent, 'qkv', None)
    heads = getattr(parent, 'num_heads', None)
    if not isinstance(qkv, nn.Linear) or not heads:
        return 0
    return qkv.out_features // 3 // heads


def quantize_modules(model: nn.Module, config: QuantConfig, first_layers: Iterable[str] = (),
                     exclude: Iterable[str] = ()) -> list[str]:
    """Replace float layers of ``model`` by quantized wrappers, in place.

    Args:
        model: the module tree to convert (e.g. a backbone).
        config: quantization settings.
        first_layers: names (relative to ``model``) of layers kept at
            ``config.first_layer_bits`` (the patch embedding).
        exclude: names of layers to leave in float.

    Returns:
        Names of the converted layers.
    """
    first_layers, exclude = set(first_layers), set(exclude)
    converted = []
    for name, module in list(model.named_modules()):
        if not name or name in exclude or _has_quantized_ancestor(model, name):
            continue
        parent, attr = _parent_and_attr(model, name)
        bits = config.first_layer_bits if name in first_layers else None
        new = _convert_one(name, module, parent, config, bits)
        if new is not None:
            setattr(parent, attr, new)
            converted.append(name)
    return converted


def _has_quantized_ancestor(model: nn.Module, name: str) -> bool:
    parts = name.split('.')
    return any(isinstance(model.get_submodule('.'.join(parts[:i])),
                          (QuantLinear, QuantConv2d, QuantSoftmax)) for i in range(1, len(parts)))


def _convert_one(name: str, module: nn.Module, parent: nn.Module, config: QuantConfig,
                 bits: int | None) -> nn.Module | None:
    w_bits = bits or config.w_bits
    a_bits = bits or config.a_bits
    if type(module) in FLOAT_LINEAR_TYPES:
        output_quantizer = None
        if config.attention and _is_fused_qkv(name, module, parent):
            channels = module.out_features // 3
            output_quantizer = QKVQuantizer(
                *(config.activation_quantizer(a_bits, channels) for _ in range(3)),
                num_heads=parent.num_heads)
        new = QuantLinear.from_float(
            module, w_bits=w_bits, output_quantizer=output_quantizer,
            input_quantizer=config.activation_quantizer(a_bits, module.in_features),
            weight_percentiles=config.weight_percentiles)
    elif type(module) in FLOAT_CONV_TYPES:
        new = QuantConv2d.from_float(
            module, w_bits=w_bits,
            input_quantizer=config.activation_quantizer(a_bits, module.in_channels,
                                                        channel_dim=1),
            weight_percentiles=config.weight_percentiles)
    elif type(module) is nn.Softmax and config.attention and module.dim in (-1, 3):
        new = QuantSoftmax(-1, quantizer=config.activation_quantizer(a_bits, None, 'softmax'),
                           value_dim=_value_dim(parent))
    else:
        return None
    # The runner may have moved the model to a GPU before the hook converts the neck:
    # the new quantizer buffers follow the float layer's device.
    reference = next(module.parameters(), None)
    if reference is not None:
        new.to(reference.device)
    for sub_name, sub in new.named_modules():
        if isinstance(sub, ActivationQuantizer):
            sub.layer_name = f'{name}.{sub_name}' if sub_name else name
    return new


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


def finalize_calibration(model: nn.Module, sync: bool = True) -> None:
    """Fit weight quantizers and turn activation statistics into parameters.

    Args:
        model: the calibrated module tree.
        sync: under ``torch.distributed``, merge the statistics of all ranks first
            so every rank ends with identical parameters. Every rank must call it
            then; pass ``False`` when one rank calibrates alone and broadcasts.

    Raises:
        ValueError: when an activation quantizer observed no batch.
    """
    for module in model.modules():
        if isinstance(module, (QuantLinear, QuantConv2d)):
            module.finalize_calibration()
    for quantizer in activation_quantizers(model).values():
        if sync:
            quantizer.sync_statistics()
        quantizer.finalize()
        quantizer.reset_statistics()


def reset_statistics(model: nn.Module) -> None:
    """Forget every recorded calibration statistic (parameters are kept)."""
    for quantizer in activation_quantizers(model).values():
        quantizer.reset_statistics()


def quantized_layer_count(model: nn.Module) -> dict[str, int]:
    """How many wrappers of each type ``model`` holds (a quick coverage check)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, (QuantLinear, QuantConv2d, QuantSoftmax)):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def float_layer_count(model: nn.Module) -> dict[str, int]:
    """Float ``Linear``/``Conv2d``/``Softmax`` layers (subclasses too) not wrapped."""
    counts: dict[str, int] = {}
    quantized = (QuantLinear, QuantConv2d, QuantSoftmax)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Softmax)) and \
                not isinstance(module, quantized):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts

"""Convert a calibrated fake-quant model to the integer executor, in place."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..nn import QuantConv2d, QuantLinear, QuantState, quantization_record
from ..quant.mode import QuantMode, mode_modules
from .layers import IntegerConv2d, IntegerLinear

INTEGER_ATTRIBUTE = 'igq_integer'
_CONVERSIONS = ((QuantLinear, IntegerLinear), (QuantConv2d, IntegerConv2d))


@dataclass
class IntegerRecord:
    """What :func:`to_integer_model` converted.

    Attributes:
        layers: ``{layer name: backend}`` of every integer layer
            (``'fp32'``, ``'fp64'`` or ``'onednn'``, :mod:`.kernels`).
        methods: ``{layer name: input quantizer method}``.
        types: ``{layer name: integer layer class name}``.
    """

    layers: dict[str, str] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Layers per ``'<class> <backend>'``, e.g. ``{'IntegerLinear fp32': 24}``."""
        counts: dict[str, int] = {}
        for name, backend in self.layers.items():
            key = f'{self.types[name]} {backend}'
            counts[key] = counts.get(key, 0) + 1
        return counts


def integer_record(model: nn.Module) -> IntegerRecord | None:
    """The record of a model converted by :func:`to_integer_model` (``None`` otherwise)."""
    record = getattr(model, INTEGER_ATTRIBUTE, None)
    return record if isinstance(record, IntegerRecord) else None


def _check_model(model: nn.Module) -> None:
    name = type(model).__name__
    if integer_record(model) is not None:
        raise ValueError(f'{name} was already converted by to_integer_model')
    record = quantization_record(model)
    if record is None:
        raise TypeError(f'{name} is a float model (not converted by igq_plugin.quantize_model): '
                        f'quantize and calibrate it before to_integer_model')
    if record.state is not QuantState.READY:
        raise ValueError(f'{name} is in state {record.state.value!r}: to_integer_model needs a '
                         f'calibrated model (state {QuantState.READY.value!r})')
    off = [n for n, m in model.named_modules()
           if m in set(mode_modules(model)) and m.mode is not QuantMode.QUANTIZED]
    if off:
        raise ValueError(f'{name}: {len(off)} quantizers are not in quantized mode (e.g. '
                         f'{off[:3]}); to_integer_model converts a model in quantized mode only')


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition('.')
    return (model.get_submodule(parent) if parent else model), attr


def to_integer_model(model: nn.Module, backend: str | None = None) -> IntegerRecord:
    """Replace every ``QuantLinear`` / ``QuantConv2d`` by its integer executor, in place.

    Every layer is checked and its integer form built before the first is replaced, so
    a refused model is left untouched. The fake-quant parts that stay are the Q/K/V
    output quantizers and the quantized softmax (attention matmuls on dequantized
    operands).

    Args:
        model: a model converted by ``quantize_model`` (or ``quantize_mm_model``),
            calibrated, with every quantizer in quantized mode.
        backend: force one backend for every layer (default: each layer's fastest exact
            one, :func:`~igq_plugin.integer.kernels.exact_backend`).

    Returns:
        :class:`IntegerRecord`, also kept as ``model.igq_integer``.

    Raises:
        TypeError: a float model, or a layer whose input quantizer has no integer form
            (upper-bound, RepQ-ViT, no input quantizer), named.
        ValueError: an uncalibrated model, quantizers out of quantized mode, a layer
            the executor does not support (grouped conv, non-zero padding mode).
    """
    _check_model(model)
    built: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        for quantized, integer in _CONVERSIONS:
            if type(module) is quantized:
                try:
                    built[name] = integer.from_quantized(module, backend)
                except (TypeError, ValueError) as error:
                    raise type(error)(f'{name}: {error}') from None
    record = IntegerRecord()
    for name, module in built.items():
        parent, attr = _parent(model, name)
        setattr(parent, attr, module)
        record.layers[name] = module.backend
        record.methods[name] = module.input_quantizer.method
        record.types[name] = type(module).__name__
    setattr(model, INTEGER_ATTRIBUTE, record)
    return record

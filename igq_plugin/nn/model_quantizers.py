"""Queries and bulk operations over the quantizers and wrappers of a converted model."""
from __future__ import annotations

from torch import nn

from ..quantizers import ActivationQuantizer, IGQQuantizer
from .layers import QUANTIZED_TYPES


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

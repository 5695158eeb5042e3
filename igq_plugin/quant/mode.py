"""The one mode switch of every quantizer: float, calibrate or quantized."""
from __future__ import annotations

import contextlib
import enum
from typing import Iterator

from torch import nn


class QuantMode(str, enum.Enum):
    """What a quantizer does in ``forward``.

    - ``FLOAT``: identity; the model computes exactly as the float model.
    - ``CALIBRATE``: identity, while recording range statistics of its inputs.
    - ``QUANTIZED``: fake-quantizes with calibrated parameters.
    - ``RECALIBRATE``: fake-quantizes with the current parameters while recording range
      statistics of its input (the second calibration pass of
      ``calibration_order='quantized'``: every input comes from quantized layers); weight
      quantizers quantize.
    """

    FLOAT = 'float'
    CALIBRATE = 'calibrate'
    QUANTIZED = 'quantized'
    RECALIBRATE = 'recalibrate'


def parse_mode(mode: 'QuantMode | str') -> QuantMode:
    """Convert a string to :class:`QuantMode`, naming the allowed values on error."""
    try:
        return QuantMode(mode)
    except ValueError:
        allowed = [m.value for m in QuantMode]
        raise ValueError(f'mode={mode!r} is not a quantization mode: allowed are {allowed}') \
            from None


class ModeSwitchMixin:
    """Marks a module whose behaviour follows the global mode switch."""

    mode: QuantMode = QuantMode.FLOAT


def mode_modules(model: nn.Module) -> list[nn.Module]:
    """All submodules (including ``model``) that follow the mode switch."""
    return [m for m in model.modules() if isinstance(m, ModeSwitchMixin)]


def set_mode(model: nn.Module, mode: 'QuantMode | str') -> None:
    """Put every quantizer of ``model`` in ``mode`` (see :class:`QuantMode`)."""
    mode = parse_mode(mode)
    for module in mode_modules(model):
        module.mode = mode


@contextlib.contextmanager
def quant_mode(model: nn.Module, mode: 'QuantMode | str') -> Iterator[nn.Module]:
    """Run a block with every quantizer of ``model`` in ``mode``; restore afterwards.

    Example:
        >>> from igq_plugin.nn import QuantLinear
        >>> layer = QuantLinear(4, 2)
        >>> with quant_mode(layer, 'calibrate'):
        ...     _ = layer(torch.randn(3, 4))
        >>> layer.weight_quantizer.mode
        <QuantMode.FLOAT: 'float'>
    """
    mode = parse_mode(mode)
    modules = mode_modules(model)
    previous = [m.mode for m in modules]
    try:
        for module in modules:
            module.mode = mode
        yield model
    finally:
        for module, old in zip(modules, previous):
            module.mode = old

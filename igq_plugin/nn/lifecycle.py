"""Life cycle of a quantized model: uncalibrated, calibrating, ready.

:func:`~igq_plugin.nn.quantize_model` attaches a :class:`QuantizationRecord` to the
converted model and a forward pre-hook (:class:`ForwardGuard`) to it and to every
module whose forward splits a batch into images (``instance_roots``). The guard
refuses to run a model that was asked to be quantized but is not calibrated, or one
that is calibrated but has quantizers left in float mode: a quantized evaluation never
silently falls back to float. A deliberate float run of a calibrated model (a
reference forward) goes through :func:`float_run`.
"""
from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass, field
from typing import Iterator

from torch import nn

from ..quant.mode import QuantMode, mode_modules, quant_mode
from .model_quantizers import set_num_instances

RECORD_ATTRIBUTE = 'igq_quantization'


class QuantState(enum.Enum):
    """Where a quantized model is in its life cycle.

    - ``UNCALIBRATED``: converted; quantizers have no parameters; forward refused.
    - ``CALIBRATING``: calibration code runs the model in any mode.
    - ``READY``: calibrated; forward requires every quantizer in quantized mode
      (except inside :func:`float_run`).
    """

    UNCALIBRATED = 'uncalibrated'
    CALIBRATING = 'calibrating'
    READY = 'ready'


@dataclass
class QuantizationRecord:
    """What :func:`~igq_plugin.nn.quantize_model` did to a model, and its state.

    Attributes:
        config: the :class:`~igq_plugin.nn.QuantConfig` the model was converted with.
        layers: names of the converted layers (relative to the model).
        first_layers: the layers kept at ``config.first_layer_bits``.
        state: the life-cycle state.
        float_runs: depth of nested :func:`float_run` blocks.
        folds: ``{linear: layernorm}`` names of the post-LayerNorm inputs whose
            per-channel scales ``repq`` / ``igq-reparam`` fold into the weights
            (:mod:`.reparam`).
        fold_originals: the float parameters an applied fold replaced, by name.
        fold_biases: names of the bias parameters a fold added (the float model's
            projection had none); not part of the float architecture.
        include, exclude, instance_roots: the parts converted, those left in float and
            the modules that receive whole images (``quantize_model``'s arguments, so
            that a saved model can be converted again the same way).
        provenance: what a loaded quantized-model file said of where its parameters
            come from (:func:`igq_plugin.load_quantized`); written again on export.
    """

    config: object
    layers: list[str] = field(default_factory=list)
    first_layers: tuple[str, ...] = ()
    state: QuantState = QuantState.UNCALIBRATED
    float_runs: int = 0
    folds: dict[str, str] = field(default_factory=dict)
    fold_originals: dict = field(default_factory=dict)
    fold_biases: list[str] = field(default_factory=list)
    include: tuple[str, ...] = ('',)
    exclude: tuple[str, ...] = ()
    instance_roots: tuple[str, ...] = ('',)
    provenance: dict = field(default_factory=dict)


def quantization_record(model: nn.Module) -> QuantizationRecord | None:
    """The record of a model converted by ``quantize_model`` (``None`` otherwise)."""
    record = getattr(model, RECORD_ATTRIBUTE, None)
    return record if isinstance(record, QuantizationRecord) else None


def require_record(model: nn.Module) -> QuantizationRecord:
    """Like :func:`quantization_record`, raising ``TypeError`` for a float model."""
    record = quantization_record(model)
    if record is None:
        raise TypeError(f'{type(model).__name__} was not converted by '
                        f'igq_plugin.quantize_model: nothing to calibrate')
    return record


def set_quant_state(model: nn.Module, state: QuantState) -> None:
    """Move a converted model to ``state``."""
    if not isinstance(state, QuantState):
        raise TypeError(f'state={state!r}: allowed are {[s.name for s in QuantState]}')
    require_record(model).state = state


@contextlib.contextmanager
def float_run(model: nn.Module) -> Iterator[nn.Module]:
    """Run a converted model as the float model, whatever its state.

    Example:
        >>> from igq_plugin.nn import QuantConfig, quantize_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> _ = quantize_model(net, QuantConfig(method='per-tensor'))
        >>> with float_run(net):
        ...     out = net(torch.ones(1, 4))
    """
    record = require_record(model)
    record.float_runs += 1
    try:
        with quant_mode(model, QuantMode.FLOAT):
            yield model
    finally:
        record.float_runs -= 1


class ForwardGuard:
    """Forward pre-hook: checks the state and tells the quantizers the batch size.

    Args:
        record: the model's record (shared by every guarded module).
        root: the converted model (for the mode check; the hook may sit on a part).
    """

    def __init__(self, record: QuantizationRecord, root: nn.Module):
        self.record = record
        self.root_name = type(root).__name__

    def __call__(self, module: nn.Module, args) -> None:
        record = self.record
        if record.float_runs == 0:
            if record.state is QuantState.UNCALIBRATED:
                raise RuntimeError(
                    f'{self.root_name} is quantized but not calibrated: run '
                    f'igq_plugin.calibrate_model (in mm configs: IGQCalibrationHook) or '
                    f'load a calibrated state before evaluation; use float_run(model) for '
                    f'a deliberate float forward')
            if record.state is QuantState.READY and any(
                    m.mode is not QuantMode.QUANTIZED for m in mode_modules(module)):
                raise RuntimeError(f'{self.root_name} is calibrated but some quantizers are '
                                   f'not in quantized mode; refusing to evaluate a partly '
                                   f'float model (use float_run(model) for a float forward)')
        batch = _first_tensor(args)
        if batch is not None:
            set_num_instances(module, batch.shape[0])


def _first_tensor(args):
    for arg in args:
        if hasattr(arg, 'shape') and len(arg.shape) > 0:
            return arg
        if isinstance(arg, (list, tuple)):
            found = _first_tensor(arg)
            if found is not None:
                return found
    return None

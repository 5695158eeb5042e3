"""ONNX export of a calibrated model: standard opset-21 operators only, no custom op.

:func:`export_onnx` writes a graph that computes the PyTorch fake-quant model:

- weights as uint4 / uint8 initializers with per-output-channel scale and zero point
  and a ``DequantizeLinear`` (:mod:`.onnx_weights`);
- every activation quantizer as its run-time rule in plain operators
  (:mod:`.onnx_quantizers`): IGQ's per-instance ranges (``ReduceMin`` / ``ReduceMax``),
  group choice (``ArgMin`` over the clipping or distance table), ``Gather`` of the group
  parameters and ``Mul`` / ``Round`` / ``Add`` / ``Clip`` / ``Sub`` / ``Mul``.

The graph has the example input's fixed shape (the instance count and the token count
of every layer are baked in). It is exported with ``torch.onnx.export``'s dynamo
exporter (``torch.export``, then onnxscript) or, with ``dynamo=False``, the TorchScript
exporter; both give the same operators. ``onnx.checker.check_model(full_check=True)``
checks the written file.

Exportable methods: :data:`ONNX_EXPORTABLE_METHODS`. ``igq-reparam``'s LayerNorm fold is
in the parameters (and a folded Swin projection's padding token is a ``Where``), so its
quantizers export as ``igq``'s. ``upper-bound`` is refused (one range per item computed
per instance: a ceiling, not a deployable quantizer), and so is ``repq`` (its log2
softmax quantizer has no export rule here).
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from ..nn import QuantState, float_run, quantization_record
from ..nn.model_quantizers import activation_quantizers
from .onnx_quantizers import CodeRecorder, export_module, export_quantizers
from .onnx_weights import fake_quantized_weights, insert_dequantize_nodes, quantized_weights

OPSET = 21  # DequantizeLinear with uint4 codes and per-axis parameters
ONNX_EXPORTABLE_METHODS = ('igq', 'igq-reparam', 'igq-fixed', 'per-tensor', 'static-group')
_WHY_NOT = {
    'upper-bound': 'it computes one range per item on every instance (the accuracy '
                   'ceiling of grouping), not a deployable quantizer',
    'repq': "RepQ-ViT's log2 softmax quantizer has no export rule",
}
_PREFIX = 'model.'  # parameter names of the exported wrapper module


def check_exportable(model: nn.Module) -> str:
    """Refuse, before any work, a model this exporter cannot write.

    Returns:
        The model's method.

    Raises:
        TypeError: ``model`` is a float model (never converted by ``quantize_model``).
        ValueError: the method is not exportable, or the model is not calibrated.
    """
    record = quantization_record(model)
    if record is None:
        raise TypeError(f'{type(model).__name__} is a float model (not converted by '
                        f'igq_plugin.quantize_model): nothing quantized to export; use '
                        f'export_float_onnx for its float graph')
    method = record.config.method
    if method not in ONNX_EXPORTABLE_METHODS:
        reason = _WHY_NOT.get(method, 'it has no export rule')
        raise ValueError(f'method={method!r} cannot be exported to ONNX: {reason}; '
                         f'exportable are {ONNX_EXPORTABLE_METHODS}')
    if record.state is not QuantState.READY:
        raise ValueError(f'{type(model).__name__} is {record.state.value}, not calibrated: '
                         f'run igq_plugin.calibrate_model (or load a calibrated state) '
                         f'before exporting')
    for name, quantizer in activation_quantizers(model).items():
        if not bool(quantizer.calibrated):
            raise ValueError(f'{name} is not calibrated: calibrate the model before '
                             f'exporting')
        export_module(quantizer, name)  # raises for a quantizer without an export rule
    return method


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ``.onnx`` file.
        input_names: graph inputs, one per example input.
        output_names: the model's outputs (flattened), then, with ``expose_codes``, one
            output per recorded tensor.
        recorded: ``{output name: (quantizer name, kind)}`` of the recorded tensors
            (kinds of :class:`~.onnx_quantizers.CodeRecorder`).
        weights: ``{parameter name: (tensor name in the graph, DequantizeLinear axis)}``.
        quantizers: the activation quantizers exported (module names).
        exporter: ``'dynamo'`` or ``'torchscript'``.
    """

    path: str
    input_names: list[str]
    output_names: list[str]
    recorded: dict[str, tuple[str, str]] = field(default_factory=dict)
    weights: dict[str, tuple[str, int]] = field(default_factory=dict)
    quantizers: list[str] = field(default_factory=list)
    exporter: str = 'dynamo'

    @property
    def model_outputs(self) -> list[str]:
        """The model's own outputs (without the recorded tensors)."""
        return [n for n in self.output_names if n not in self.recorded]


def _flatten(result) -> list[torch.Tensor]:
    """A tensor, or a (nested) tuple / list of tensors, as a flat list."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for part in result for t in _flatten(part)]
    raise TypeError(f'the forward returned {type(result).__name__}; the ONNX export needs '
                    f'a tensor or a tuple / list of tensors')


class _Exported(nn.Module):
    """The module handed to the exporter: ``forward(model, *inputs)`` flattened, then
    the recorded tensors."""

    def __init__(self, model: nn.Module, forward: Callable, recorder: CodeRecorder | None):
        super().__init__()
        self.model, self.run, self.recorder = model, forward, recorder
        self.training = model.training  # the exporter warns about a module in training mode

    def forward(self, *inputs):
        if self.recorder is not None:
            self.recorder.entries.clear()
        outputs = _flatten(self.run(self.model, *inputs))
        recorded = [t for _, _, t in self.recorder.entries] if self.recorder else []
        return tuple(outputs + recorded)


def _default_forward(model: nn.Module, *inputs):
    return model(*inputs)


def _write(module: nn.Module, inputs: tuple, path: str, input_names: list[str],
           output_names: list[str], dynamo: bool) -> None:
    with torch.no_grad():
        if dynamo:
            torch.onnx.export(module, inputs, path, dynamo=True, opset_version=OPSET,
                              input_names=input_names, output_names=output_names,
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(module, inputs, path, dynamo=False, opset_version=OPSET,
                              input_names=input_names, output_names=output_names)


def _input_names(inputs: tuple) -> list[str]:
    return ['input'] if len(inputs) == 1 else [f'input_{i}' for i in range(len(inputs))]


@contextlib.contextmanager
def _weights_in_use(model: nn.Module, weights: dict) -> Iterator[set[str]]:
    """The names of the quantized weights whose quantizer runs inside the block."""
    used, hooks = set(), []
    modules = dict(model.named_modules())
    for name in weights:
        quantizer = modules.get(f'{name}_quantizer')
        if quantizer is not None:
            hooks.append(quantizer.register_forward_hook(
                lambda module, args, out, name=name: used.add(name)))
    try:
        yield used
    finally:
        for hook in hooks:
            hook.remove()


def export_onnx(model: nn.Module, inputs: Sequence[torch.Tensor], path: str, *,
                forward: Callable | None = None, expose_codes: bool = False,
                dynamo: bool = True, check: bool = True) -> OnnxExport:
    """Export a calibrated quantized model to ONNX (opset 21, fixed input shape).

    Args:
        model: converted by ``quantize_model`` and calibrated; method in
            :data:`ONNX_EXPORTABLE_METHODS`.
        inputs: example inputs; the graph keeps their shapes (and so the batch size,
            the number of images that the group assignment treats as instances).
        path: the ``.onnx`` file to write (its folder is created).
        forward: ``forward(model, *inputs)`` -> tensor or tuple of tensors (default
            ``model(*inputs)``; e.g. a detector's ``extract_feat``).
        expose_codes: also output every quantizer's input, codes and (IGQ) group
            indices (see :attr:`OnnxExport.recorded`), for checks against PyTorch.
        dynamo: the dynamo exporter (default) or the TorchScript one.
        check: run ``onnx.checker.check_model(path, full_check=True)``.

    Returns:
        :class:`OnnxExport`.

    Raises:
        TypeError / ValueError: see :func:`check_exportable` (raised before exporting).
    """
    check_exportable(model)
    inputs = tuple(inputs)
    forward = forward or _default_forward
    weights = quantized_weights(model)
    with torch.no_grad(), _weights_in_use(model, weights) as used:
        # sets every quantizer's instance count for this input size, and finds the
        # quantized weights this forward reads (e.g. not a segmentor's decode head when
        # only its backbone + neck are exported)
        reference = _flatten(forward(model, *inputs))
    weights = {name: weight for name, weight in weights.items() if name in used}
    recorder = CodeRecorder() if expose_codes else None
    wrapper = _Exported(model, forward, recorder)
    input_names = _input_names(inputs)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with export_quantizers(model, recorder) as names, fake_quantized_weights(model, weights):
        recorded = {}
        if recorder is not None:  # one eager run finds what will be recorded
            with torch.no_grad():
                wrapper(*inputs)
            for index, (name, kind, _) in enumerate(recorder.entries):
                recorded[f'{kind}:{name}#{index}'] = (name, kind)
        output_names = [f'output_{i}' for i in range(len(reference))] + list(recorded)
        _write(wrapper, inputs, path, input_names, output_names, dynamo)
    graph = onnx.load(path)
    placed = insert_dequantize_nodes(graph, weights, prefix=_PREFIX)
    onnx.save(graph, path)
    if check:
        onnx.checker.check_model(path, full_check=True)
    return OnnxExport(path, input_names, output_names, recorded, placed, names,
                      'dynamo' if dynamo else 'torchscript')


def export_float_onnx(model: nn.Module, inputs: Sequence[torch.Tensor], path: str, *,
                      forward: Callable | None = None, dynamo: bool = True,
                      check: bool = True) -> OnnxExport:
    """Export the float graph of ``model`` (a float model, or a converted model run as
    float through :func:`~igq_plugin.float_run`): the baseline of the timing."""
    inputs = tuple(inputs)
    forward = forward or _default_forward
    wrapper = _Exported(model, forward, None)
    input_names = _input_names(inputs)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    converted = quantization_record(model) is not None
    with float_run(model) if converted else torch.no_grad():
        with torch.no_grad():
            count = len(_flatten(forward(model, *inputs)))
        output_names = [f'output_{i}' for i in range(count)]
        _write(wrapper, inputs, path, input_names, output_names, dynamo)
    if check:
        onnx.checker.check_model(path, full_check=True)
    return OnnxExport(path, input_names, output_names,
                      exporter='dynamo' if dynamo else 'torchscript')


# onnxruntime fuses DequantizeLinear(uint4) + MatMul into its MatMulNBits kernel; at its
# default accuracy level (4) that kernel rounds the activations to int8 first, a model
# other than the exported one (8% off on the tiny test ViT). Level 0 keeps them float.
ORT_SETTINGS = {'session.qdq_matmulnbits_accuracy_level': '0'}


def onnx_session(path: str, threads: int = 1, settings: dict[str, str] | None = None):
    """An onnxruntime CPU session of ``path`` with ``threads`` intra-op threads (one
    inter-op thread, sequential execution) and :data:`ORT_SETTINGS` (``settings``
    replaces them, e.g. ``{}`` for onnxruntime's defaults)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    for key, value in (ORT_SETTINGS if settings is None else settings).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def run_onnx(export: OnnxExport, inputs: Sequence[torch.Tensor], threads: int = 1,
             session=None) -> dict[str, np.ndarray]:
    """Run the exported graph in onnxruntime: ``{output name: array}``."""
    session = session or onnx_session(export.path, threads)
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(export.input_names, inputs)}
    return dict(zip(export.output_names, session.run(export.output_names, feeds)))


def relative_error(actual, expected) -> float:
    """``max|a - b| / max|b|`` (0 for two all-zero tensors)."""
    actual = torch.as_tensor(np.asarray(actual), dtype=torch.float64)
    expected = torch.as_tensor(np.asarray(expected), dtype=torch.float64)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    error = float((actual - expected).abs().max()) if expected.numel() else 0.0
    return error / scale if scale > 0 else error

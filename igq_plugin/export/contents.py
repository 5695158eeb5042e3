"""A calibrated model as the tensors and JSON record of a quantized-model file.

:func:`model_contents` splits a calibrated model into three kinds of tensors:

- packed integer weights of every quantized layer (:mod:`.weights`);
- every activation quantizer's run-time tables (:mod:`.activations`);
- every other state-dict tensor the model still needs (norms, biases, layers left in
  float, heads), under its state-dict name. A float tensor is stored as float16 when
  that is lossless (e.g. a model loaded from a float16 checkpoint), else as it is.

A model of ``method='igq-reparam'`` is written with its folds applied: the LayerNorms'
affines and the projections' weights and biases are the folded ones, and a bias the
fold added to a projection that had none is listed in the header's ``fold_biases``
(it is not part of the float architecture).

:func:`check_contents` and :func:`restore_contents` are the reverse: every entry is
checked against the model before any tensor of the model is changed.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from ..nn import (QuantState, add_fold_biases, fold_bias_names, mark_folds_applied,
                  quantization_record, quantizer_buffers, require_record)
from ..nn.model_quantizers import activation_quantizers
from .activations import (activation_entry, check_activation_entry, exportable_type,
                          restore_activation_entry)
from .weights import (WEIGHT_TENSORS, check_weight_entry, dequantized_weight,
                      quantized_weights, restore_weight_entry, weight_entry)

EXPORTABLE_METHODS = ('igq', 'igq-reparam', 'igq-fixed', 'per-tensor', 'static-group')


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict tensors that are neither quantizer buffers nor quantized weights."""
    skip = set(quantizer_buffers(model)) | set(quantized_weights(model))
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def _fold_biases(model: nn.Module) -> list[str]:
    record = quantization_record(model)
    return [] if record is None else sorted(record.fold_biases)


def architecture(model: nn.Module) -> dict[str, list[int]]:
    """Name and shape of every float tensor of the model as a float model (the
    quantized weights included; quantizer buffers and the biases a fold added not):
    the file's architecture."""
    added = set(_fold_biases(model))
    shapes = {k: list(v.shape) for k, v in float_state(model).items() if k not in added}
    shapes.update({name: list(parameter.shape)
                   for name, (parameter, _) in quantized_weights(model).items()})
    return dict(sorted(shapes.items()))


def architecture_fingerprint(shapes: dict[str, list[int]]) -> str:
    """sha256 (16 hex digits) of :func:`architecture`'s names and shapes."""
    text = ';'.join(f'{k}:{tuple(v)}' for k, v in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_exportable(model: nn.Module) -> Any:
    """The model's record, after refusing a float, uncalibrated or unexportable model."""
    try:
        record = require_record(model)
    except TypeError:
        raise TypeError(f'{type(model).__name__} is a float model: quantize and calibrate it '
                        f'(igq_plugin.quantize_model, calibrate_model) before exporting') from None
    if record.config.method not in EXPORTABLE_METHODS:
        raise ValueError(f'method={record.config.method!r} cannot be exported: exportable are '
                         f'{EXPORTABLE_METHODS}')
    if record.state is not QuantState.READY:
        raise ValueError(f'{type(model).__name__} is {record.state.value}: calibrate it (or '
                         f'load a calibrated state) before exporting')
    for name, quantizer in activation_quantizers(model).items():
        exportable_type(quantizer, name)
    return record


def _float_copy(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype != torch.float16:
        half = tensor.to(torch.float16)
        if torch.equal(half.to(tensor.dtype), tensor):  # lossless (NaN would fail: kept)
            return half
    return tensor.clone().contiguous()


def model_contents(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, record)`` of a calibrated model (see the module docstring)."""
    record = check_exportable(model)
    tensors = {name: _float_copy(t) for name, t in float_state(model).items()}
    weights = {}
    for name, (parameter, quantizer) in quantized_weights(model).items():
        tensors.update({f'{name}_{k}': v
                        for k, v in weight_entry(parameter, quantizer, name).items()})
        weights[name] = quantizer.bits
    activations = {}
    for name, quantizer in activation_quantizers(model).items():
        entry, activations[name] = activation_entry(quantizer, name)
        tensors.update({f'{name}.{k}': v for k, v in entry.items()})
    shapes = architecture(model)
    header = dict(config=record.config.as_dict(), model_class=type(model).__name__,
                  conversion=dict(include=list(record.include), exclude=list(record.exclude),
                                  first_layers=list(record.first_layers),
                                  instance_roots=list(record.instance_roots)),
                  architecture_fingerprint=architecture_fingerprint(shapes),
                  float_tensors=sorted(float_state(model)), weights=weights,
                  activations=activations)
    if record.folds:
        header['fold_biases'] = _fold_biases(model)
    return tensors, header


def _entries(tensors: dict[str, torch.Tensor], owner: str) -> dict[str, torch.Tensor]:
    """The tensors of an activation quantizer (``owner.<name>``), by relative name."""
    prefix = f'{owner}.'
    return {k[len(prefix):]: v for k, v in tensors.items()
            if k.startswith(prefix) and '.' not in k[len(prefix):]}


def _weight_tensors(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors of a quantized weight (``<name>_packed`` ...) that the file has."""
    return {k: tensors[f'{name}_{k}'] for k in WEIGHT_TENSORS if f'{name}_{k}' in tensors}


def _name_differences(what: str, saved, own) -> list[str]:
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    found = []
    if missing:
        found.append(f'{len(missing)} {what} of the model not in the file (e.g. {missing[:3]})')
    if unexpected:
        found.append(f'{len(unexpected)} {what} in the file not in the model (e.g. '
                     f'{unexpected[:3]})')
    return found


def check_architecture(model: nn.Module, header: dict[str, Any], path: str) -> None:
    """Refuse a file written for another architecture, naming the tensors that differ."""
    shapes = architecture(model)
    if architecture_fingerprint(shapes) == header['architecture_fingerprint']:
        return
    added = set(header.get('fold_biases', []))
    saved = {k: None for k in header['float_tensors'] if k not in added}
    saved.update({k: None for k in header['weights']})
    problems = _name_differences('tensors', saved, shapes)
    if not problems:
        problems = ['the same tensor names with other shapes']
    raise ValueError(f'{path!r} was exported from another architecture ({header["model_class"]}'
                     f'; this model is {type(model).__name__}): {"; ".join(problems)}')


def check_contents(model: nn.Module, tensors: dict[str, torch.Tensor],
                   header: dict[str, Any], path: str) -> dict[str, torch.Tensor]:
    """Check every entry of the file against a converted model; change nothing.

    Returns:
        The dequantized weight of every quantized layer (computed while checking).

    Raises:
        ValueError: naming the first layer, quantizer or tensor that does not match.
    """
    check_architecture(model, header, path)
    layers, quantizers = quantized_weights(model), activation_quantizers(model)
    problems = (_name_differences('quantized weights', header['weights'], layers)
                + _name_differences('activation quantizers', header['activations'],
                                    quantizers))
    if problems:
        raise ValueError(f'{path!r} quantizes other layers than this model: '
                         f'{"; ".join(problems)}')
    _check_fold_biases(model, tensors, header, path)
    own_float, added = float_state(model), set(header.get('fold_biases', []))
    for name in header['float_tensors']:
        if name in added:
            continue
        if name not in tensors or tensors[name].shape != own_float[name].shape:
            raise ValueError(f'{path!r}: float tensor {name!r} is missing or has another shape')
    weights = {}
    for name, (parameter, quantizer) in layers.items():
        entry = _weight_tensors(tensors, name)
        check_weight_entry(parameter, quantizer, name, entry, header['weights'][name])
        try:
            weights[name] = dequantized_weight(entry, header['weights'][name])
        except ValueError as error:
            raise ValueError(f'{name}: {error}') from None
    for name, quantizer in quantizers.items():
        check_activation_entry(quantizer, name, _entries(tensors, name),
                               header['activations'][name])
    return weights


def _check_fold_biases(model: nn.Module, tensors: dict[str, torch.Tensor],
                       header: dict[str, Any], path: str) -> None:
    """The biases a fold added must be biases of this model's folded projections, each
    ``[out]`` in the file and listed among its float tensors."""
    added = header.get('fold_biases', [])
    if not added:
        return
    weights = fold_bias_names(model)
    for name in added:
        if name not in weights or name not in header['float_tensors'] or name not in tensors:
            raise ValueError(f'{path!r}: fold bias {name!r} is not the bias of a folded '
                             f'projection of this model, or is missing from the file')
        rows = model.get_parameter(weights[name]).shape[0]
        if tuple(tensors[name].shape) != (rows,):
            raise ValueError(f'{path!r}: fold bias {name!r} has shape '
                             f'{tuple(tensors[name].shape)}; expected ({rows},)')


def restore_contents(model: nn.Module, tensors: dict[str, torch.Tensor],
                     header: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    """Fill a converted model from checked contents (:func:`check_contents`).

    The parameters of a file with folds are the folded ones: they are marked applied
    (no float parameter is kept to restore)."""
    record = require_record(model)
    record.fold_originals.clear()  # the model's parameters now come from the file
    add_fold_biases(model, header.get('fold_biases', []))
    own_float = float_state(model)
    with torch.no_grad():
        for name in header['float_tensors']:
            own_float[name].copy_(tensors[name].to(own_float[name].dtype))
    for name, (parameter, quantizer) in quantized_weights(model).items():
        restore_weight_entry(parameter, quantizer, weights[name], _weight_tensors(tensors, name))
    for name, quantizer in activation_quantizers(model).items():
        restore_activation_entry(quantizer, _entries(tensors, name), header['activations'][name])
    mark_folds_applied(model)

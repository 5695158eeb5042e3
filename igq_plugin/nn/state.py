"""Calibrated quantization state: every quantizer buffer plus cost records.

The state is a plain dict of tensors, strings and numbers (loadable with
``torch.load(weights_only=True)``). Loading checks every key and shape before
copying anything, so a state from another model leaves the model untouched.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..quantizers import ActivationQuantizer, OpCost
from ..quant.mode import ModeSwitchMixin
from .reparam import apply_folds

STATE_FORMAT = 'igq-quant-state-v1'


def quantizer_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Persistent buffers of every quantizer module of ``model``, by full name."""
    buffers = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, ModeSwitchMixin):
            continue
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                buffers[f'{module_name}.{name}' if module_name else name] = buffer
    return buffers


def _cost_records(model: nn.Module) -> dict[str, dict[str, Any]]:
    records = {}
    for name, module in model.named_modules():
        if isinstance(module, ActivationQuantizer) and module.last_input_shape is not None:
            records[name] = dict(shape=list(module.last_input_shape),
                                 num_instances=module.num_instances,
                                 op_cost=(dataclasses.asdict(module.op_cost)
                                          if module.op_cost is not None else None))
    return records


def export_state(model: nn.Module, **meta: Any) -> dict[str, Any]:
    """The calibrated quantization state of ``model`` (copies, on the CPU).

    Args:
        model: a calibrated model.
        **meta: extra JSON-like entries (config hash, allocation, ...).
    """
    return dict(format=STATE_FORMAT,
                buffers={k: v.detach().cpu().clone() for k, v in quantizer_buffers(model).items()},
                costs=_cost_records(model), meta=meta)


def import_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load a state from :func:`export_state` into ``model``.

    Raises:
        ValueError: wrong format, or buffer names/shapes that do not match the model
            (nothing is changed in that case).

    A state of ``method='repq'`` also changes the float weights it was folded into
    (:func:`~igq_plugin.nn.reparam.apply_folds`), from the float weights the model has.
    """
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        found = state.get('format') if isinstance(state, dict) else type(state).__name__
        raise ValueError(f'not a quantization state: format={found!r}, expected {STATE_FORMAT!r}')
    own = quantizer_buffers(model)
    saved = state['buffers']
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    mismatched = sorted(k for k in set(own) & set(saved) if own[k].shape != saved[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(f'quantization state does not match this model: '
                         f'{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} '
                         f'unexpected (e.g. {unexpected[:3]}), {len(mismatched)} with other '
                         f'shapes (e.g. {mismatched[:3]})')
    with torch.no_grad():
        for key, buffer in own.items():
            buffer.copy_(saved[key].to(buffer.device))
    apply_folds(model)  # RepQ-ViT's folds live in the buffers: refold the float weights
    modules = dict(model.named_modules())
    for name, record in state.get('costs', {}).items():
        quantizer = modules.get(name)
        if isinstance(quantizer, ActivationQuantizer):
            quantizer.last_input_shape = tuple(record['shape'])
            quantizer.num_instances = record['num_instances']
            cost = record['op_cost']
            quantizer.op_cost = OpCost(**cost) if cost else None

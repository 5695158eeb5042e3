"""Saving and loading the calibrated state with a fingerprint of model and config."""
from __future__ import annotations

import hashlib
import json
import os.path as osp
from typing import Any

import torch
from torch import nn

from ..nn import export_state, import_state, quantizer_buffers


def config_fingerprint(model_cfg: Any) -> str:
    """sha256 of the model config (as sorted JSON)."""
    if hasattr(model_cfg, 'to_dict'):
        model_cfg = model_cfg.to_dict()
    text = json.dumps(model_cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every float parameter's name, shape, sum and sum of squares."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            values = param.detach().double()
            digest.update(f'{name}:{tuple(param.shape)}:{values.sum().item():.10e}:'
                          f'{values.square().sum().item():.10e};'.encode())
    return digest.hexdigest()[:16]


def buffers_fingerprint(model: nn.Module) -> str:
    """sha256 of every quantizer buffer's bytes (equal iff the parameters are equal)."""
    digest = hashlib.sha256()
    for name, buffer in sorted(quantizer_buffers(model).items()):
        digest.update(name.encode())
        digest.update(buffer.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprinted_state(model: nn.Module, config_hash: str, weights_hash: str,
                        **meta: Any) -> dict:
    """The calibrated state of ``model`` tagged with config and weights fingerprints."""
    return export_state(model, config_hash=config_hash, weights_hash=weights_hash, **meta)


def load_state(model: nn.Module, path: str, config_hash: str, weights_hash: str) -> dict:
    """Load a state saved by :func:`save_state`, after checking it belongs here.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the state was made for another config or other weights, or its
            buffers do not match the model (the model is left untouched).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'quantization state file {path!r} does not exist')
    state = torch.load(path, map_location='cpu', weights_only=True)
    meta = state.get('meta', {}) if isinstance(state, dict) else {}
    if meta.get('config_hash') != config_hash:
        raise ValueError(f'quantization state {path!r} was calibrated for model config '
                         f'{meta.get("config_hash")!r}, but this config is {config_hash!r}; '
                         f'calibrate again (remove state_file) or use the matching config')
    if meta.get('weights_hash') != weights_hash:
        raise ValueError(f'quantization state {path!r} was calibrated on weights '
                         f'{meta.get("weights_hash")!r}, but the loaded checkpoint is '
                         f'{weights_hash!r}; calibrate again for these weights')
    import_state(model, state)
    return state

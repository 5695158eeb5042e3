"""Saving and loading the calibrated state, with what it was calibrated for.

A state file holds every quantizer buffer (:func:`igq_plugin.nn.export_state`) and, in
its ``meta``, the quantization settings, the model config (as JSON) and a fingerprint
of the float weights. Loading checks all three before anything is copied and says
which setting differs.
"""
from __future__ import annotations

import hashlib
import json
import os.path as osp
from typing import Any

import torch
from torch import nn

from ..export import SUFFIX as QUANTIZED_SUFFIX
from ..nn import STATE_FORMAT, export_state, import_state, quantizer_buffers


def config_json(model_cfg: Any) -> str:
    """The model config as sorted JSON (what the state file stores)."""
    if hasattr(model_cfg, 'to_dict'):
        model_cfg = model_cfg.to_dict()
    return json.dumps(model_cfg, sort_keys=True, default=str)


def config_fingerprint(model_cfg: Any) -> str:
    """sha256 of the model config (as sorted JSON)."""
    return hashlib.sha256(config_json(model_cfg).encode()).hexdigest()[:16]


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


def fingerprinted_state(model: nn.Module, settings: dict, model_cfg: Any, weights_hash: str,
                        **meta: Any) -> dict:
    """The calibrated state of ``model`` with what it was calibrated for."""
    return export_state(model, settings=dict(settings), model_config=config_json(model_cfg),
                        config_hash=config_fingerprint(model_cfg), weights_hash=weights_hash,
                        **meta)


def _flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f'{prefix}.{key}' if prefix else str(key)))
        return flat
    return {prefix: value}


def describe_differences(saved: dict, current: dict, limit: int = 6) -> list[str]:
    saved, current = _flatten(saved), _flatten(current)
    # the outermost differences first: a detector's state in a segmentor shows `type`
    keys = sorted((k for k in set(saved) | set(current) if saved.get(k) != current.get(k)),
                  key=lambda k: (k.count('.'), k))
    return [f'{k}: state {saved.get(k, "<absent>")!r}, now {current.get(k, "<absent>")!r}'
            for k in keys[:limit]] + ([f'... {len(keys) - limit} more'] if len(keys) > limit
                                      else [])


def read_state(path: str) -> dict:
    """Read a state file, refusing anything that is not one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable (corrupt, not a torch file, or holding objects a
            weights-only load refuses) or not an IGQ state.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'quantization state file {path!r} does not exist')
    if path.endswith(QUANTIZED_SUFFIX):
        raise ValueError(f'{path!r} is a quantized model, not a calibrated state: pass it as '
                         f'the checkpoint (tools/test.py CONFIG {osp.basename(path)}) and '
                         f'remove state_file')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ''
        raise ValueError(f'{path!r} is not a readable IGQ quantization state (corrupt, or '
                         f'not written by IGQCalibrationHook): {type(error).__name__}: '
                         f'{first_line[:200]}') from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        found = (f'a dict with keys {sorted(state)[:6]}' if isinstance(state, dict)
                 else type(state).__name__)
        raise ValueError(f'{path!r} is not an IGQ quantization state (format '
                         f'{STATE_FORMAT!r}): it holds {found}; pass a file saved as '
                         f'igq_state.pth by IGQCalibrationHook')
    return state


def load_state(model: nn.Module, path: str, settings: dict, model_cfg: Any,
               weights_hash: str) -> dict:
    """Load a state saved by the hook, after checking it belongs to this model.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a state file, or calibrated with other settings, another
            model config or other weights, or buffers that do not match the model
            (the model is left untouched).
    """
    state = read_state(path)
    meta = state.get('meta', {})
    saved_settings = meta.get('settings')
    if saved_settings != dict(settings):
        differences = '; '.join(describe_differences(saved_settings or {}, dict(settings)))
        raise ValueError(f'quantization state {path!r} was calibrated with other settings '
                         f'({differences}); '
                         f'calibrate again (remove state_file) or use the matching config')
    if meta.get('config_hash') != config_fingerprint(model_cfg):
        saved_cfg = json.loads(meta['model_config']) if meta.get('model_config') else {}
        current = json.loads(config_json(model_cfg))
        differences = '; '.join(describe_differences(saved_cfg, current))
        raise ValueError(f'quantization state {path!r} was calibrated for another model '
                         f'config ({differences}); calibrate '
                         f'again (remove state_file) or use the matching config')
    if meta.get('weights_hash') != weights_hash:
        raise ValueError(f'quantization state {path!r} was calibrated on other weights '
                         f'(fingerprint {meta.get("weights_hash")!r}, the loaded checkpoint '
                         f'is {weights_hash!r}); calibrate again for these weights')
    import_state(model, state)
    return state

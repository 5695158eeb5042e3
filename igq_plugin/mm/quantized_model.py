"""Quantized-model files in MMDetection / MMSegmentation.

- :func:`export_mm_model` writes a calibrated detector or segmentor to
  ``*.igq.safetensors`` with what it was made from (settings, model config, the float
  weights' fingerprint, the registry scope).
- A checkpoint loader for ``*.igq.safetensors`` paths, registered with mmengine's
  ``CheckpointLoader`` when ``igq_plugin.mm`` is imported, lets the stock
  ``tools/test.py CONFIG model.igq.safetensors`` evaluate the quantized model: no float
  checkpoint, no calibration. ``IGQCalibrationHook`` (which the config must have)
  checks the file against the config and fills the converted model
  (:func:`load_into_runner_model`). Without the hook the loader refuses the file: the
  model would be evaluated with nothing loaded.
- :func:`load_mm_quantized` builds the model from the file alone (its stored config).
"""
from __future__ import annotations

import copy
import json
from typing import Any

from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import CheckpointLoader
from torch import nn

from ..export import SUFFIX, QuantizedFile, export_quantized, load_quantized, read_quantized
from .convert import mm_settings, quantize_mm_model
from .state_io import describe_differences, config_fingerprint, config_json

# ``CheckpointLoader`` matches its prefixes as regular expressions against the path
QUANTIZED_FILE_PATTERN = r'.*\.igq\.safetensors$'
CHECKPOINT_KEY = 'igq_quantized_file'
_expecting = {'hooks': 0}


def export_mm_model(model: nn.Module, path: str, model_cfg: Any, weights_hash: str,
                    default_scope: str | None = None) -> str:
    """Export a calibrated mm model with its provenance (see the module docstring)."""
    settings = mm_settings(model)
    if settings is None:
        raise TypeError(f'{type(model).__name__}.backbone was not built by IGQBackbone: '
                        f'nothing quantized to export')
    meta = dict(settings=settings.as_dict(), model_config=config_json(model_cfg),
                config_hash=config_fingerprint(model_cfg), weights_hash=weights_hash,
                default_scope=default_scope)
    return export_quantized(model, path, meta=meta)


def check_mm_file(quantized: QuantizedFile, model: nn.Module, model_cfg: Any) -> None:
    """Refuse a file made for other settings or another model config, by name."""
    meta = quantized.meta
    if 'settings' not in meta or 'config_hash' not in meta:
        raise ValueError(f'{quantized.path!r} was not exported from an mm model (no settings '
                         f'or model config in it); load it with igq_plugin.load_quantized')
    settings = mm_settings(model).as_dict()
    if meta['settings'] != settings:
        differences = '; '.join(describe_differences(meta['settings'], settings))
        raise ValueError(f'{quantized.path!r} was exported with other settings '
                         f'({differences}); use the config it was exported with')
    if meta['config_hash'] != config_fingerprint(model_cfg):
        saved, current = json.loads(meta['model_config']), json.loads(config_json(model_cfg))
        raise ValueError(f'{quantized.path!r} was exported for another model config '
                         f'({"; ".join(describe_differences(saved, current))}); use the config it '
                         f'was exported with')


def expect_quantized_file() -> None:
    """Called by ``IGQCalibrationHook.before_run``: a quantized file may now be loaded."""
    _expecting['hooks'] += 1


def load_from_quantized_file(filename: str, map_location=None) -> dict:
    """mmengine checkpoint loader of ``*.igq.safetensors`` (read and checked here;
    ``IGQCalibrationHook.after_load_checkpoint`` puts it into the model)."""
    if not _expecting['hooks']:
        raise ValueError(f'{filename!r} is a quantized model: evaluate it with a config whose '
                         f"model.backbone.type is 'IGQBackbone' and whose custom_hooks have "
                         f"IGQCalibrationHook (the float model cannot load it)")
    return {CHECKPOINT_KEY: read_quantized(filename), 'state_dict': {}}


def quantized_file_of(checkpoint: dict) -> QuantizedFile | None:
    """The file a checkpoint dict came from, if it is a quantized-model file."""
    found = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return found if isinstance(found, QuantizedFile) else None


def load_into_runner_model(model: nn.Module, checkpoint: dict, model_cfg: Any) -> str:
    """Fill a converted model from the quantized file behind ``checkpoint``.

    The checkpoint's ``state_dict`` becomes the model's own state, so that mmengine's
    loading, which follows, changes nothing.

    Returns:
        A one-line report for the log.
    """
    quantized = quantized_file_of(checkpoint)
    check_mm_file(quantized, model, model_cfg)
    load_quantized(model, quantized)
    checkpoint['state_dict'] = model.state_dict()
    _expecting['hooks'] = max(0, _expecting['hooks'] - 1)
    return (f'IGQ: loaded the quantized model {quantized.path} ({len(quantized.tensors)} '
            f'tensors; no float checkpoint, no calibration)')


def load_mm_quantized(path: str, model_cfg: Any = None) -> nn.Module:
    """Build an mm detector / segmentor from a quantized file alone.

    Args:
        path: a ``*.igq.safetensors`` file written by :func:`export_mm_model`.
        model_cfg: the model config; ``None``: the one stored in the file.

    Returns:
        The quantized model in eval mode, ready to run.
    """
    quantized = read_quantized(path)
    meta = quantized.meta
    if 'model_config' not in meta:
        raise ValueError(f'{path!r} holds no mm model config: load it with '
                         f'igq_plugin.load_quantized and the model\'s architecture')
    if meta.get('default_scope'):
        init_default_scope(meta['default_scope'])
    if model_cfg is None:  # a ConfigDict, as mm models expect (attribute access)
        model_cfg = Config(dict(model=json.loads(meta['model_config']))).model
    # mm detectors write their train / test settings into the config they are built
    # from: the file is checked against the config as given
    model = MODELS.build(copy.deepcopy(model_cfg)).eval()
    quantize_mm_model(model)
    check_mm_file(quantized, model, model_cfg)
    return load_quantized(model, quantized)


CheckpointLoader.register_scheme(prefixes=QUANTIZED_FILE_PATTERN,
                                 loader=load_from_quantized_file, force=True)

__all__ = ['SUFFIX', 'export_mm_model', 'check_mm_file', 'load_from_quantized_file',
           'load_into_runner_model', 'load_mm_quantized', 'quantized_file_of']

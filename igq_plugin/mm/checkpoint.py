"""Load mmengine checkpoints under torch >= 2.6 without turning off ``weights_only``.

mmengine 0.10.7's ``load_from_local`` calls ``torch.load(filename, map_location)``.
Since torch 2.6 that means ``weights_only=True``, which refuses the non-tensor
objects mmengine itself writes into a checkpoint's ``meta``: the message hub's
``HistoryBuffer`` (numpy arrays and scalars, and its statistics methods pickled as
``getattr(HistoryBuffer, 'min')``). Rather than loading every checkpoint with
``weights_only=False`` (arbitrary code execution from a file), the plugin registers,
through mmengine's own extension point (``CheckpointLoader.register_scheme``), a
local loader that keeps ``weights_only=True`` and allow-lists exactly these types
for the duration of that one load.

It changes how mmengine loads every local file, so it is opt-in: importing
``igq_plugin.mm`` does not register it; a config that loads or resumes mmengine
training checkpoints adds ``'igq_plugin.mm.checkpoint'`` to ``custom_imports`` (the
demo training configs do). Float checkpoints that are plain state dicts (the demo
models, mmdet's released weights) need none of this. ``getattr`` is safe enough there: the
weights-only unpickler still refuses to call anything not allow-listed.
"""
from __future__ import annotations

import os.path as osp

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

_NUMPY_DTYPES = (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                 np.uint8, np.bool_)


def mmengine_checkpoint_globals() -> list:
    """The classes and functions an mmengine checkpoint's meta data pickles."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    return [HistoryBuffer, getattr, multiarray._reconstruct, multiarray.scalar, np.ndarray,
            np.dtype, *(type(np.dtype(t)) for t in _NUMPY_DTYPES)]


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's local checkpoint loader, with ``weights_only=True`` kept."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)


CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)

"""``*.igq.safetensors``: one file that holds a calibrated model, and its loader.

The file is a standard safetensors file (:mod:`.contents` lists its tensors). Its
header's ``__metadata__`` has one key, ``igq``, whose value is a JSON record:

- ``format`` (``'igq-safetensors'``) and ``version`` (:data:`FORMAT_VERSION`);
- ``config``: every :class:`~igq_plugin.QuantConfig` field (method, bits, ...);
- ``conversion``: the parts converted (``include`` / ``exclude`` / ``first_layers`` /
  ``instance_roots``, as :func:`~igq_plugin.quantize_model` takes them);
- ``model_class``, ``architecture_fingerprint`` and ``float_tensors``: what the model is;
- ``weights``: ``{layer: bits}``; ``activations``: ``{quantizer: record}`` (type, bits,
  G per layer, assignment rule, ...);
- ``content_sha256``: a hash of every tensor's name, dtype, shape and bytes;
- ``meta``: where the parameters come from (for mm models: the settings, the model
  config and its fingerprint, the float weights' fingerprint).

Reading checks, in this order and before the model is touched: the file is a
complete safetensors file (a truncated one, a pickle checkpoint or a foreign
safetensors file is refused by name), the format version, the content hash, the
architecture (tensor names and shapes), the settings, then every entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from dataclasses import dataclass
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from ..nn import QuantConfig, QuantState, quantization_record, quantize_model, set_quant_state
from ..quant import QuantMode, set_mode
from .contents import check_architecture, check_contents, model_contents, restore_contents

FORMAT = 'igq-safetensors'
FORMAT_VERSION = 1
METADATA_KEY = 'igq'
SUFFIX = '.igq.safetensors'


@dataclass
class QuantizedFile:
    """The checked contents of a quantized-model file.

    Attributes:
        path: where it was read from.
        header: the ``igq`` metadata record (see the module docstring).
        tensors: every tensor, by name.
    """

    path: str
    header: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def meta(self) -> dict[str, Any]:
        """The provenance record (``header['meta']``)."""
        return self.header.get('meta', {})


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_quantized(model: nn.Module, path: str, meta: dict[str, Any] | None = None) -> str:
    """Write a calibrated model to ``path`` (``*.igq.safetensors``).

    Args:
        model: a calibrated model (method ``igq``, ``igq-reparam``, ``igq-fixed``,
            ``per-tensor`` or ``static-group``).
        path: the file to write; it must end with ``.igq.safetensors``. It is
            written to a temporary file first, so a failed export leaves what was there.
        meta: JSON-serialisable provenance; ``None``: what the model was loaded with
            (so that exporting a loaded model again gives the same bytes), or nothing.

    Returns:
        ``path``.

    Raises:
        TypeError: a float model. ValueError: another suffix, an uncalibrated model or
            a method that cannot be exported.
    """
    if not str(path).endswith(SUFFIX):
        raise ValueError(f'path={path!r}: a quantized model file must end with {SUFFIX!r}')
    tensors, header = model_contents(model)
    if meta is None:
        meta = quantization_record(model).provenance
    header = dict(header, format=FORMAT, version=FORMAT_VERSION, meta=meta,
                  content_sha256=content_hash(tensors))
    data = save_bytes(tensors, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})
    temporary = f'{path}.partial'
    with open(temporary, 'wb') as handle:
        handle.write(data)
    os.replace(temporary, path)
    return path


def _refuse_unreadable(path: str, error: Exception) -> None:
    with open(path, 'rb') as handle:
        start = handle.read(9)
    # a safetensors file: an 8-byte header length, then the JSON header; torch.save
    # writes a zip archive (or, before torch 1.6, a pickle starting with its magic number)
    if start[8:9] != b'{' and (start.startswith(b'PK\x03\x04')
                               or start.startswith(b'\x80\x02\x8a\x0a')):
        raise ValueError(f'{path!r} is a PyTorch checkpoint (zip / pickle), not a quantized '
                         f'{SUFFIX} file; a float checkpoint is loaded as the float model '
                         f'and calibrated, a quantized one is exported by '
                         f'igq_plugin.export_quantized') from None
    raise ValueError(f'{path!r} is not a complete safetensors file (truncated or corrupt): '
                     f'{str(error)[:200]}') from None


def read_header(path: str) -> dict[str, Any]:
    """The ``igq`` record of a file, after checking it is one of ours (no tensor read).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a complete safetensors file, a pickle checkpoint, a safetensors
            file without the ``igq`` record, or another format version.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'quantized model file {path!r} does not exist')
    try:
        with safe_open(path, framework='pt') as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        _refuse_unreadable(path, error)
    if METADATA_KEY not in metadata:
        raise ValueError(f'{path!r} is a safetensors file without the {METADATA_KEY!r} record '
                         f'(e.g. a float model saved with safetensors), not a quantized model '
                         f'written by igq_plugin.export_quantized')
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError:
        raise ValueError(f'{path!r}: its {METADATA_KEY!r} record is not valid JSON') from None
    if header.get('format') != FORMAT or header.get('version') != FORMAT_VERSION:
        raise ValueError(f'{path!r} has format {header.get("format")!r} version '
                         f'{header.get("version")!r}; this igq_plugin reads {FORMAT!r} '
                         f'version {FORMAT_VERSION}')
    return header


def read_quantized(path: str) -> QuantizedFile:
    """Read and check a whole file (header, then tensors and their hash)."""
    header = read_header(path)
    try:  # memory-mapped: no second copy of the file's bytes
        tensors = load_file(path)
    except (SafetensorError, ValueError) as error:
        _refuse_unreadable(path, error)
    if content_hash(tensors) != header.get('content_sha256'):
        raise ValueError(f'{path!r}: the tensors do not match the hash in the header; the '
                         f'file is corrupt or was edited')
    return QuantizedFile(path, header, tensors)


def _config_differences(saved: dict, current: dict) -> str:
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return '; '.join(f'{k}: file {saved.get(k, "<absent>")!r}, model '
                     f'{current.get(k, "<absent>")!r}' for k in keys)


def _convert_like(model: nn.Module, quantized: QuantizedFile) -> None:
    header = quantized.header
    conversion = header['conversion']
    input_range = None
    for name, record in header['activations'].items():
        if record['type'] == 'fixed-range':
            input_range = (quantized.tensors[f'{name}.lower'], quantized.tensors[f'{name}.upper'])
    quantize_model(model, QuantConfig(**header['config']), include=conversion['include'],
                   exclude=conversion['exclude'], first_layers=conversion['first_layers'],
                   instance_roots=conversion['instance_roots'], input_range=input_range)


def load_quantized(model_or_builder: nn.Module | Callable[[dict], nn.Module],
                   path: str | QuantizedFile) -> nn.Module:
    """Load a quantized model from a file; no float checkpoint and no calibration.

    Args:
        model_or_builder: the model's architecture: a float model (its weights are
            replaced; it is converted like the exported one), a model already converted
            with the same settings (e.g. by the mm plugin), or a function that builds
            the float model from the file's ``meta`` record.
        path: a ``*.igq.safetensors`` file (or one read by :func:`read_quantized`).

    Returns:
        The model, calibrated and in quantized mode (``QuantState.READY``).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_header`; another architecture,
            other settings, or entries that do not match (the model's tensors are left
            as they were).
    """
    quantized = path if isinstance(path, QuantizedFile) else read_quantized(path)
    header = quantized.header
    model = model_or_builder
    if not isinstance(model, nn.Module):
        model = model_or_builder(quantized.meta)
        if not isinstance(model, nn.Module):
            raise TypeError(f'the builder returned {type(model).__name__}, not an nn.Module')
    record = quantization_record(model)
    if record is None:
        check_architecture(model, header, quantized.path)  # before converting it
        _convert_like(model, quantized)
        record = quantization_record(model)
    elif record.config.as_dict() != header['config']:
        raise ValueError(f'{quantized.path!r} was exported with other settings than this '
                         f'model was converted with: '
                         f'{_config_differences(header["config"], record.config.as_dict())}')
    weights = check_contents(model, quantized.tensors, header, quantized.path)
    restore_contents(model, quantized.tensors, header, weights)
    record.provenance = header.get('meta', {})
    set_mode(model, QuantMode.QUANTIZED)
    set_quant_state(model, QuantState.READY)
    return model


def file_sizes(path: str, prefixes: tuple[str, ...] = ()) -> dict[str, int]:
    """Bytes of the tensors of a file, in total and under each name prefix."""
    sizes = {'file': osp.getsize(path)}
    with safe_open(path, framework='pt') as handle:
        for name in handle.keys():
            tensor = handle.get_slice(name)
            count = 1
            for size in tensor.get_shape():
                count *= size
            nbytes = count * _DTYPE_BYTES[tensor.get_dtype()]
            sizes['tensors'] = sizes.get('tensors', 0) + nbytes
            for prefix in prefixes:
                if name.startswith(prefix):
                    sizes[prefix] = sizes.get(prefix, 0) + nbytes
    return sizes


_DTYPE_BYTES = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2,
                'I8': 1, 'U8': 1, 'BOOL': 1}

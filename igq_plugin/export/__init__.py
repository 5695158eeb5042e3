"""A deployable quantized model: the ``*.igq.safetensors`` file and its loader.

``export_quantized(model, path)`` writes a calibrated model with packed integer
weights and every activation quantizer's run-time tables; ``load_quantized(model, path)``
rebuilds the quantized model from the file alone (no float checkpoint, no
calibration). docs/deployment.md describes the format.
"""
from .activations import EXPORTABLE
from .contents import EXPORTABLE_METHODS, architecture, model_contents
from .packing import pack_codes, unpack_codes
from .quantized_file import (FORMAT, FORMAT_VERSION, SUFFIX, QuantizedFile, export_quantized,
                             file_sizes, load_quantized, read_header, read_quantized)

__all__ = ['EXPORTABLE', 'EXPORTABLE_METHODS', 'architecture', 'model_contents', 'pack_codes',
           'unpack_codes', 'FORMAT', 'FORMAT_VERSION', 'SUFFIX', 'QuantizedFile',
           'export_quantized', 'file_sizes', 'load_quantized', 'read_header', 'read_quantized']

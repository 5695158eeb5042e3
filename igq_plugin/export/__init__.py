"""A deployable quantized model: the ``*.igq.safetensors`` file and the ONNX graph.

``export_quantized(model, path)`` writes a calibrated model with packed integer
weights and every activation quantizer's run-time tables; ``load_quantized(model, path)``
rebuilds the quantized model from the file alone (no float checkpoint, no
calibration). ``export_onnx(model, inputs, path)`` writes the quantized model as a
standard opset-21 ONNX graph (:mod:`.onnx_graph`). docs/deployment.md describes both.

The ONNX names are imported on first use, so that the core runs without the ``onnx``
package (``pip install igq-plugin[export]`` brings it).
"""
import importlib

from .activations import EXPORTABLE
from .contents import EXPORTABLE_METHODS, architecture, model_contents
from .packing import pack_codes, unpack_codes
from .quantized_file import (FORMAT, FORMAT_VERSION, SUFFIX, QuantizedFile, export_quantized,
                             file_sizes, load_quantized, read_header, read_quantized)

# name -> module of the ONNX export (imported on first use, PEP 562)
_ONNX_NAMES = {
    'export_onnx': 'onnx_graph', 'export_float_onnx': 'onnx_graph',
    'OnnxExport': 'onnx_graph', 'ONNX_EXPORTABLE_METHODS': 'onnx_graph',
    'onnx_session': 'onnx_graph', 'run_onnx': 'onnx_graph', 'relative_error': 'onnx_graph',
    'ORT_SETTINGS': 'onnx_graph', 'compare_codes': 'onnx_checks',
}


def __getattr__(name: str):
    if name not in _ONNX_NAMES:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    try:
        module = importlib.import_module(f'.{_ONNX_NAMES[name]}', __name__)
    except ModuleNotFoundError as error:
        raise ImportError(f'igq_plugin.export.{name} needs the {error.name!r} package: '
                          f'pip install igq-plugin[export]') from None
    return getattr(module, name)


__all__ = [*_ONNX_NAMES, 'EXPORTABLE', 'EXPORTABLE_METHODS', 'architecture', 'model_contents',
           'pack_codes', 'unpack_codes', 'FORMAT', 'FORMAT_VERSION', 'SUFFIX', 'QuantizedFile',
           'export_quantized', 'file_sizes', 'load_quantized', 'read_header', 'read_quantized']

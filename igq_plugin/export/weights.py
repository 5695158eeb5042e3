"""The weight side of a quantized-model file: packed integer codes per output channel.

Every weight parameter ``P`` that a :class:`~igq_plugin.quantizers.WeightQuantizer`
named ``P_quantizer`` quantizes (``L.weight`` of a ``QuantLinear`` / ``QuantConv2d``,
``M.in_proj_weight`` of a quantized ``nn.MultiheadAttention``) is written with the
tensor names of compressed-tensors' ``pack_quantized`` format where they fit:

- ``P_packed``: ``uint8 [C_out, ceil(K * b / 8)]``, the unsigned codes
  ``q = clamp(round(w / s) + z, 0, 2^b - 1)`` of every output channel's ``K`` weights
  (``K = C_in`` or ``C_in * kh * kw``), bit-packed (:mod:`.packing`);
- ``P_scale``: ``float32 [C_out]``;
- ``P_zero_point``: ``uint8 [C_out]`` (integers in ``0 .. 2^b - 1``);
- ``P_shape``: ``int64 [ndim]``, the float weight's shape.

Where we differ from compressed-tensors, and why: its codes are signed (``q - 8``
for int4) in ``int32`` words; ours are the unsigned codes of our asymmetric quantizer,
packed in bytes, so any width from 2 to 8 bits packs without padding (6-bit weights
included) and the 4-bit layout is ONNX's ``UINT4``. Its scales are ``[C_out, 1]``;
ours are ``[C_out]``. The weight dequantizes as ``w_hat = s * (q - z)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..integer import weight_codes
from ..quant.primitives import dequantize
from ..quantizers import WeightQuantizer
from .packing import pack_codes, unpack_codes

WEIGHT_TENSORS = ('packed', 'scale', 'zero_point', 'shape')
QUANTIZER_SUFFIX = '_quantizer'


def quantized_weights(model: nn.Module) -> dict[str, tuple[nn.Parameter, WeightQuantizer]]:
    """``{parameter name: (parameter, its quantizer)}`` of every quantized weight."""
    parameters = dict(model.named_parameters())
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, WeightQuantizer):
            parameter = name.removesuffix(QUANTIZER_SUFFIX)
            if parameter == name or parameter not in parameters:
                raise ValueError(f'{name}: a weight quantizer must be named after the '
                                 f'parameter it quantizes (<parameter>{QUANTIZER_SUFFIX})')
            found[parameter] = (parameters[parameter], module)
    return found


def weight_entry(weight: torch.Tensor, quantizer: WeightQuantizer,
                 name: str) -> dict[str, torch.Tensor]:
    """The packed weight of one calibrated quantizer (tensor names relative to
    ``name + '_'``)."""
    if not bool(quantizer.calibrated):
        raise ValueError(f'{name}: the weight quantizer is not calibrated; calibrate the '
                         f'model before exporting it')
    weight = weight.detach().float().cpu()
    rows = weight.reshape(weight.shape[0], -1)
    scale = quantizer.scale.detach().float().cpu()
    zero = quantizer.zero_point.detach().float().cpu()
    codes = weight_codes(rows, scale, zero, quantizer.bits)
    return dict(packed=pack_codes(codes, quantizer.bits), scale=scale.clone(),
                zero_point=zero.to(torch.uint8),
                shape=torch.tensor(weight.shape, dtype=torch.int64))


def check_weight_entry(weight: torch.Tensor, quantizer: WeightQuantizer, name: str,
                       tensors: dict[str, torch.Tensor], bits: int) -> None:
    """Check one layer's packed weight against the model (nothing is changed).

    Raises:
        ValueError: missing tensors, another weight shape or bit-width, a zero point
            outside the codes' range.
    """
    if set(tensors) != set(WEIGHT_TENSORS):
        raise ValueError(f'{name}: the file has weight tensors {sorted(tensors)}; expected '
                         f'{list(WEIGHT_TENSORS)}')
    if bits != quantizer.bits:
        raise ValueError(f'{name}: the file has {bits}-bit weights; this model quantizes '
                         f'them to {quantizer.bits} bits')
    shape = tuple(tensors['shape'].tolist())
    if shape != tuple(weight.shape):
        raise ValueError(f'{name}: the file has a weight of shape {shape}; the model\'s is '
                         f'{tuple(weight.shape)}')
    rows = shape[0]
    for key in ('scale', 'zero_point'):
        if tuple(tensors[key].shape) != (rows,):
            raise ValueError(f'{name}: {key} has shape {tuple(tensors[key].shape)}; '
                             f'expected ({rows},)')
    if int(tensors['zero_point'].max()) > (1 << bits) - 1:
        raise ValueError(f'{name}: a weight zero point exceeds the {bits}-bit code range')
    if not (torch.isfinite(tensors['scale']).all() and bool((tensors['scale'] > 0).all())):
        raise ValueError(f'{name}: weight scales must be finite and positive')
    # the packed size itself is checked by unpacking (restore_weight_entry)


def dequantized_weight(tensors: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    """``w_hat = s * (q - z)`` of a packed weight, in its float shape (float32)."""
    shape = tuple(tensors['shape'].tolist())
    per_row = 1
    for size in shape[1:]:
        per_row *= size
    codes = unpack_codes(tensors['packed'], bits, per_row).float()
    scale = tensors['scale'].float()[:, None]
    zero = tensors['zero_point'].float()[:, None]
    return dequantize(codes, scale, zero).reshape(shape)


def restore_weight_entry(parameter: nn.Parameter, quantizer: WeightQuantizer,
                         weight: torch.Tensor, tensors: dict[str, torch.Tensor]) -> None:
    """Put a dequantized weight into ``parameter`` and its parameters into ``quantizer``.

    Fake-quantizing ``w_hat`` with the same ``(s, z)`` gives ``w_hat`` back exactly
    (``w_hat / s`` is within an ulp of the integer ``q - z``), so the loaded layer
    computes what the exported one did, and exporting it again gives the same codes.
    """
    with torch.no_grad():
        parameter.copy_(weight.to(parameter.dtype))
        quantizer.scale.copy_(tensors['scale'])
        quantizer.zero_point.copy_(tensors['zero_point'].float())
        quantizer.calibrated.fill_(True)

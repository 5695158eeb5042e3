"""Bit packing of unsigned integer codes into bytes (the file's weight layout).

Codes of ``b`` bits are laid out as one little-endian bit stream per row: code ``k``
of a row occupies bits ``k*b .. k*b + b - 1`` of the row's stream, and bit ``i`` of
the stream is bit ``i % 8`` of byte ``i // 8`` (least significant bit first). For
``b = 4`` this is "two codes per byte, the first in the low nibble", which is both
ONNX's ``UINT4`` layout and the byte order of compressed-tensors' ``pack_quantized``
int32 words on a little-endian machine; for ``b = 8`` it is one ``uint8`` per code.
Other widths (e.g. 6 bits) pack without padding inside a row, so a 6-bit weight takes
6/16 of its float16 size. Each row ends on a byte boundary (rows are output channels,
so a row can be unpacked on its own).
"""
from __future__ import annotations

import numpy as np
import torch

from ..quant.primitives import check_bits

MAX_PACKED_BITS = 8


def packed_row_bytes(codes_per_row: int, bits: int) -> int:
    """Bytes of one packed row of ``codes_per_row`` codes."""
    return -(-codes_per_row * bits // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes ``[R, K]`` (integers in ``0 .. 2^b - 1``) into ``uint8``.

    Returns:
        ``[R, ceil(K * bits / 8)]`` ``uint8``.

    Raises:
        ValueError: a bit-width over 8, or a code outside ``0 .. 2^b - 1``.

    Example:
        >>> pack_codes(torch.tensor([[1, 2, 15]]), 4)
        tensor([[33, 15]], dtype=torch.uint8)
    """
    check_bits(bits)
    if bits > MAX_PACKED_BITS:
        raise ValueError(f'bits={bits}: packing holds codes of at most {MAX_PACKED_BITS} bits')
    if codes.dim() != 2:
        raise ValueError(f'codes of shape {tuple(codes.shape)}: expected [rows, codes]')
    values = codes.detach().cpu().to(torch.int64).numpy()
    if values.size and (values.min() < 0 or values.max() > (1 << bits) - 1):
        raise ValueError(f'codes outside 0..{(1 << bits) - 1} cannot be packed in {bits} bits')
    rows, count = values.shape
    if bits == 8:
        return torch.from_numpy(values.astype(np.uint8))
    # [R, K, b] bits of every code, least significant first, then one stream per row
    stream = ((values[..., None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(rows, -1)
    return torch.from_numpy(np.packbits(stream, axis=1, bitorder='little'))


def unpack_codes(packed: torch.Tensor, bits: int, codes_per_row: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``uint8 [R, bytes]`` -> ``uint8 [R, K]`` codes.

    Raises:
        ValueError: when ``packed`` does not have the bytes ``K`` codes of ``bits`` need.
    """
    check_bits(bits)
    if bits > MAX_PACKED_BITS:
        raise ValueError(f'bits={bits}: packing holds codes of at most {MAX_PACKED_BITS} bits')
    expected = packed_row_bytes(codes_per_row, bits)
    if packed.dim() != 2 or packed.dtype != torch.uint8 or packed.shape[1] != expected:
        raise ValueError(f'packed codes of shape {tuple(packed.shape)} and dtype '
                         f'{packed.dtype}: {codes_per_row} codes of {bits} bits per row '
                         f'need uint8 [rows, {expected}]')
    data = packed.detach().cpu().numpy()
    if bits == 8:
        return torch.from_numpy(data.copy())
    stream = np.unpackbits(data, axis=1, bitorder='little')[:, :codes_per_row * bits]
    weights = (1 << np.arange(bits)).astype(np.uint8)
    codes = (stream.reshape(data.shape[0], codes_per_row, bits) * weights).sum(
        axis=-1, dtype=np.uint8)
    return torch.from_numpy(codes)

"""Uniform asymmetric quantization as pure functions over tensors.

A ``b``-bit quantizer with bounds ``[l, u]`` has (docs/method.md, section 2)::

    s = (u - l) / (2^b - 1)
    z = clamp(round(-l / s), 0, 2^b - 1)
    q = clamp(round(x / s) + z, 0, 2^b - 1)
    x_hat = s * (q - z)

"What shares a scale" is expressed only by the shape of ``scale`` and
``zero_point``: a scalar (per tensor), a vector broadcast along one dimension (per
channel), or a tensor gathered per instance and channel from G group quantizers
(per group). All functions broadcast, so one implementation serves every variant.

Rounding multiplies by ``1 / s`` (as PyTorch's own fake-quantize kernels do), so
the results agree bit for bit with ``torch.fake_quantize_per_*_affine``.

Without autograd, :func:`fake_quantize` works in place on one output tensor: the
same bits (NaN stays NaN) with one allocation instead of six.
"""
from __future__ import annotations

import torch

MIN_BITS = 2
MAX_BITS = 16
# Smallest scale: keeps a constant channel (u == l) finite instead of dividing by 0.
MIN_SCALE = 1e-8


def check_bits(bits: int, what: str = 'bits') -> int:
    """Validate a bit-width.

    Args:
        bits: requested bit-width.
        what: name used in the error message (e.g. ``'a_bits'``).

    Returns:
        ``bits`` as an ``int``.

    Raises:
        ValueError: when ``bits`` is not an integer in ``[2, 16]``.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f'{what}={bits!r} is not supported: allowed are integers '
                         f'{MIN_BITS}..{MAX_BITS}')
    return int(bits)


def qmax(bits: int) -> int:
    """Largest integer code of an unsigned ``bits``-bit quantizer (``2^b - 1``)."""
    return (1 << bits) - 1


def qparams_from_bounds(lower: torch.Tensor, upper: torch.Tensor, bits: int,
                        include_zero: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the asymmetric quantizer covering ``[lower, upper]``.

    The range is first widened to contain 0 so that 0 is exactly representable
    (zero padding and ReLU outputs stay exact), as PyTorch's observers do.

    Args:
        lower: lower bounds, any shape.
        upper: upper bounds, same shape as ``lower``.
        bits: bit-width in ``[2, 16]``.
        include_zero: ``False`` keeps the range as given and the zero point unclamped
            (RepQ-ViT's published quantizer; only its study switch uses it).

    Returns:
        ``(scale, zero_point)``, both float tensors of the shape of ``lower``;
        ``zero_point`` holds integers, in ``[0, 2^b - 1]`` with ``include_zero``.
    """
    levels = qmax(check_bits(bits))
    if include_zero:
        lower = torch.clamp(lower, max=0.0)
        upper = torch.clamp(upper, min=0.0)
    scale = torch.clamp((upper - lower) / levels, min=MIN_SCALE)
    zero_point = torch.round(-lower * (1.0 / scale))
    if include_zero:
        zero_point = torch.clamp(zero_point, 0, levels)
    return scale, zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
             bits: int) -> torch.Tensor:
    """Integer codes ``q = clamp(round(x / s) + z, 0, 2^b - 1)`` (as a float tensor).

    Args:
        x: input, any shape.
        scale: broadcastable to ``x``.
        zero_point: broadcastable to ``x``.
        bits: bit-width.

    Returns:
        Codes of the broadcast shape, dtype of ``x``.
    """
    return torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, 0, qmax(bits))


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """``x_hat = s * (q - z)``, broadcasting as :func:`quantize`."""
    return (q - zero_point) * scale


class _RoundSTE(torch.autograd.Function):
    """Round with the straight-through gradient (identity)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  bits: int, integer_zero_point: bool = False) -> torch.Tensor:
    """Quantize then dequantize, differentiable with a straight-through estimator.

    The gradient w.r.t. ``x`` is 1 inside the representable range and 0 where the
    code is clamped, as in ``torch.fake_quantize_per_tensor_affine``.

    When no gradient is needed (``torch.no_grad()``, or no input requires grad) and
    the inputs are float32/float64 tensors of one dtype whose broadcast shape is that
    of ``x``, the result is computed in place in one output tensor: bit for bit the
    same values (NaN stays NaN), without five full-size temporaries.

    Args:
        x: input, any shape.
        scale: broadcastable to ``x``.
        zero_point: broadcastable to ``x``.
        bits: bit-width.
        integer_zero_point: the caller guarantees that every zero point is an integer
            in ``[0, 2^b - 1]`` (as :func:`qparams_from_bounds` gives), which spares
            the in-place path a check on every call.

    Returns:
        ``x_hat`` with the broadcast shape of the inputs.

    Example:
        >>> x = torch.tensor([-1.0, 0.0, 0.26, 3.0])
        >>> s, z = qparams_from_bounds(torch.tensor(-1.0), torch.tensor(2.0), 2)
        >>> fake_quantize(x, s, z, 2)
        tensor([-1., 0., 0., 2.])
    """
    if _inference_ok(x, scale, zero_point):
        return _fake_quantize_inplace(x, scale, zero_point, bits, integer_zero_point)
    codes = torch.clamp(_RoundSTE.apply(x * (1.0 / scale)) + zero_point, 0, qmax(bits))
    return (codes - zero_point) * scale


_INPLACE_DTYPES = (torch.float32, torch.float64)


def _inference_ok(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> bool:
    """Whether :func:`_fake_quantize_inplace` gives :func:`fake_quantize`'s result."""
    if not (isinstance(scale, torch.Tensor) and isinstance(zero_point, torch.Tensor)):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad
                                    or zero_point.requires_grad):
        return False
    if x.dtype not in _INPLACE_DTYPES or scale.dtype != x.dtype or zero_point.dtype != x.dtype:
        return False
    return _broadcasts_to(scale.shape, x.shape) and _broadcasts_to(zero_point.shape, x.shape)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """``broadcast_shapes(shape, target) == target`` (which costs 0.2 ms a call)."""
    offset = len(target) - len(shape)
    return offset >= 0 and all(size in (1, target[offset + i]) for i, size in enumerate(shape))


def _fake_quantize_inplace(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                           bits: int, integer_zero_point: bool = False) -> torch.Tensor:
    """:func:`fake_quantize` without autograd, in one output tensor, bit for bit.

    In general each step of the formula is done in place (all operands have one
    dtype, so no step promotes). Two cases save passes: for an integer
    ``|z| <= 2^16`` and any float ``r = round(x / s)``,
    ``clamp(r + z, 0, q) - z == clamp(r, -z, q - z)`` exactly (integers below 2^24
    add exactly; a larger ``|r|`` saturates on both sides), and adding ``+0.0``
    last turns the ``-0.0`` of ``c = -0.0`` into the ``+0.0`` that ``c - z`` gives.
    That is used when the one zero point is 0, and when the parameters vary along
    the last, contiguous dimension (channels last), where the fused ternary kernels
    are vectorised (unlike with per-tensor or per-row parameters).
    """
    out = torch.mul(x, torch.reciprocal(scale))  # the one allocation; 1.0 / s == reciprocal(s)
    out.round_()
    levels = qmax(bits)
    if zero_point.dim() == 0 and not bool(zero_point):  # one zero point, 0 (e.g. softmax)
        out.clamp_(0, levels)
        return out.mul_(scale).add_(0.0)
    if _varies_along_last(scale, out) and _varies_along_last(zero_point, out) and \
            (integer_zero_point or _small_integers(zero_point)):
        out.clamp_(-zero_point, levels - zero_point)
        return torch.addcmul(out.new_zeros(()), out, scale, out=out)
    out.add_(zero_point).clamp_(0, levels).sub_(zero_point)
    return out.mul_(scale)


def _varies_along_last(param: torch.Tensor, out: torch.Tensor) -> bool:
    return param.dim() > 0 and param.shape[-1] == out.shape[-1] > 1


def _small_integers(values: torch.Tensor) -> bool:
    """Whether every value is an integer in ``[-2^16, 2^16]`` (zero points always are)."""
    return torch.equal(values, torch.round(values).clamp_(-(1 << 16), 1 << 16))


def fake_quantize_bounds(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                         bits: int) -> torch.Tensor:
    """:func:`fake_quantize` with the quantizer given by its bounds ``[lower, upper]``."""
    scale, zero_point = qparams_from_bounds(lower, upper, bits)
    return fake_quantize(x, scale, zero_point, bits)


def log_sqrt2_codes(x: torch.Tensor, delta: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Codes of the log2 quantizer with sqrt(2) resolution (RepQ-ViT's softmax
    quantizer, docs/method.md, section 8): ``q = round(-2 log2(x / delta))``.

    Args:
        x: non-negative values (softmax probabilities), any shape.
        delta: the largest representable value (a scalar or broadcastable tensor).
        bits: code width; codes live in ``0 .. 2^bits - 1``.

    Returns:
        ``int64`` codes of the shape of ``x``; ``-1`` marks values that dequantize to 0
        (``x == 0``, or a code past the top, ``q > 2^bits - 1``). Values above ``delta``
        clamp to code 0.

    Example:
        >>> log_sqrt2_codes(torch.tensor([1.0, 0.5, 0.25, 0.0]), 1.0, 4)
        tensor([ 0,  2,  4, -1])
    """
    check_bits(bits)
    delta = torch.as_tensor(delta, dtype=x.dtype, device=x.device)
    positive = x > 0
    ratio = torch.where(positive, x / delta, torch.ones_like(x))
    codes = torch.round(-2.0 * torch.log2(ratio)).clamp(min=0).to(torch.int64)
    return torch.where(positive & (codes <= qmax(bits)), codes, torch.full_like(codes, -1))


def log_sqrt2_fake_quantize(x: torch.Tensor, delta: torch.Tensor | float,
                            bits: int) -> torch.Tensor:
    """Quantize and dequantize with the log2-sqrt(2) quantizer:
    ``x_hat = delta * 2^(-q / 2)`` for the codes of :func:`log_sqrt2_codes`, 0 where
    the code is ``-1``.

    Example:
        >>> log_sqrt2_fake_quantize(torch.tensor([0.7, 2.0, 0.0]), 1.0, 4)
        tensor([0.7071, 1.0000, 0.0000])
    """
    codes = log_sqrt2_codes(x, delta, bits)
    delta = torch.as_tensor(delta, dtype=x.dtype, device=x.device)
    values = delta * torch.pow(2.0, -codes.clamp(min=0).to(x.dtype) / 2)
    return torch.where(codes >= 0, values, torch.zeros_like(values))

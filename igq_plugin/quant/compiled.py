"""Compiled run-time fake-quantization, with the eager path as fallback.

The eager fake-quantizer (:func:`~igq_plugin.quant.primitives.fake_quantize`) is a
chain of whole-tensor operations: even in place it passes over its output four times.
Compiled with ``torch.compile`` (inductor: C++ with OpenMP on CPU, Triton on CUDA),
:func:`fake_quantize_reciprocal` is one fused loop that reads ``x`` once and writes
``x_hat`` once, for every parameter layout the quantizers use: per tensor, per
channel, per instance and channel, and per softmax row. The compiled path runs on the
devices of :data:`COMPILED_DEVICES` (the CPU; CUDA once this module's tests have passed
on a GPU), for float32 inputs without autograd, from :data:`MIN_COMPILED_ELEMENTS` on.

What stays eager, and why:

- the quantizer parameters, ``1 / s`` included: they are small, and inductor replaces a
  division by a constant with a multiplication by its reciprocal (on CUDA) and Triton
  divides approximately, either of which changes bits;
- the item ranges of the upper-bound quantizer and the ``'nearest'`` assignment
  (neither is a deployment path); IGQ's default ``'cover'`` rule has its ranges,
  positions and gathers compiled in :mod:`.compiled_groups`.

The compiled loop holds only the eager formula's operations (``x * r``, ``round`` half
to even, ``clamp``, ``(q - z) * s``), and inductor's C++ flags keep IEEE arithmetic
(no unsafe-math or finite-math optimisations, no contraction into FMA), so results
equal the eager path bit for bit (``tests/quant/test_compiled.py``). Its one relaxed
flag, ``-fno-signed-zeros``, cannot show: the formula never yields ``-0.0``.

Shapes are compiled dynamic (``dynamic=True``): a new image or batch size reuses the
kernel. Sizes 0 and 1 are still specialised (torch's 0/1 rule), so e.g. going from one
instance to several compiles once more. Every entry point passes tensors of a fixed
rank, and each layout has its own compiled function, so a model needs a handful of
graphs.

Compilation is lazy (the first call of each layout) and can be switched off with the
environment variable ``IGQ_COMPILE=0`` or :func:`set_compile_enabled`. When a compile
fails (no C++ compiler, an unsupported Python, a backend error) the eager path runs,
and one warning is logged (logger ``'igq_plugin'``) the first time.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator

import torch

from .primitives import fake_quantize, qparams_from_bounds

logger = logging.getLogger('igq_plugin')

ENV_VAR = 'IGQ_COMPILE'
_OFF = ('0', 'false', 'off', 'no')

# Quantizers whose run-time path is compiled: each was at least as fast compiled as
# eager on every Swin-T activation shape of benchmarks/benchmark.py (--parts quantizers,
# one CPU thread, 800x1216 images, tensors of 0.7M to 23M elements), and faster on
# most; on the largest, both are bound by allocating the output and gain little.
# The weight quantizer's per-output-channel pass ('weight') is compiled too: one pass
# instead of the eager path's four over every weight, on every forward.
# 'qkv': Q, K and V fake-quantized in one pass (igq_plugin.nn.QKVQuantizer).
COMPILED_QUANTIZERS = frozenset({'per-tensor', 'static-group', 'igq', 'upper-bound', 'weight',
                                 'qkv'})
# Devices whose compiled kernels were checked bit for bit against eager. CUDA (Triton)
# joins when tests/quant/test_compiled.py has passed on a GPU.
COMPILED_DEVICES = frozenset({'cpu'})
# Below this many elements a call stays eager: a compile repays itself only over many
# calls of its layout. Below 32k to 64k float32 elements (one CPU thread) the compiled
# call's fixed cost (guards, wrapper) exceeds what it saves; up to 2M it saves at most
# about 1 ms (IGQ on Swin-T's shapes: benchmark.py --parts quantizers, at 192x192 and
# 800x1216), so the seconds a layout takes to compile on a cold cache need thousands of
# calls, more than evaluating a few hundred images makes: the demo's detector (192-px
# images, 4 per batch, every tensor under 1.2M elements) ran slower compiled (README,
# "Performance", third round). At 800x1216 the Swin-T activations that stay eager are
# the stage-2 and stage-3 token inputs and the stage-3 attention maps (0.7M to 1.5M).
MIN_COMPILED_ELEMENTS = 1 << 21


def enabled_by_environment() -> bool:
    """``IGQ_COMPILE``'s setting: off for ``0``, ``false``, ``off`` or ``no``; on otherwise."""
    return os.environ.get(ENV_VAR, '1').strip().lower() not in _OFF


class _State:
    enabled = enabled_by_environment()
    warned = False


def set_compile_enabled(enabled: bool) -> None:
    """Switch the compiled paths on or off for this process (overrides ``IGQ_COMPILE``).

    Switching on again also retries the paths whose compile failed.
    """
    _State.enabled = bool(enabled)
    if enabled:
        for graph in _GRAPHS:
            graph.failed = False


def compile_enabled() -> bool:
    """Whether the compiled paths are switched on."""
    return _State.enabled


@contextlib.contextmanager
def compiling(enabled: bool) -> Iterator[None]:
    """Switch the compiled paths on or off inside a ``with`` block (e.g. to time both).

    Example:
        >>> with compiling(False):
        ...     compile_enabled()
        False
    """
    previous = _State.enabled
    _State.enabled = bool(enabled)
    try:
        yield
    finally:
        _State.enabled = previous


def use_compiled(quantizer: str, x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether the compiled path gives ``quantizer``'s result for this call.

    True when compilation is on, ``quantizer`` is in :data:`COMPILED_QUANTIZERS`, ``x``
    has at least :data:`MIN_COMPILED_ELEMENTS` elements, ``x`` and every parameter are
    float32 on one device of :data:`COMPILED_DEVICES`, no gradient is recorded (the
    eager path has the straight-through estimator) and no tracer or outer
    ``torch.compile`` runs (they see the eager operations).
    """
    if not _State.enabled or quantizer not in COMPILED_QUANTIZERS:
        return False
    if x.numel() < MIN_COMPILED_ELEMENTS or x.dtype != torch.float32 or \
            x.device.type not in COMPILED_DEVICES:
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    if any(p.dtype != torch.float32 or p.device != x.device for p in params):
        return False
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def fake_quantize_reciprocal(x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor,
                             zero_point: torch.Tensor, levels: int) -> torch.Tensor:
    """``x_hat = (clamp(round(x * inv_scale) + z, 0, levels) - z) * scale``, broadcasting.

    With ``inv_scale = reciprocal(scale)`` this is the formula that
    :func:`~igq_plugin.quant.primitives.fake_quantize` computes (its in-place variants
    are tested against it bit for bit).

    Args:
        x: input, any shape.
        inv_scale: ``1 / scale``, broadcastable to ``x``.
        scale: broadcastable to ``x``.
        zero_point: broadcastable to ``x``.
        levels: ``2^b - 1``.

    Returns:
        ``x_hat``, shape of ``x``.
    """
    codes = torch.clamp(torch.round(x * inv_scale) + zero_point, 0, levels)
    return (codes - zero_point) * scale


# One function (code object) per layout, and per contiguous or strided input (e.g. the
# Q, K and V chunks of a fused qkv output): torch.compile keeps at most 8 graphs per
# code object, and a layout needs a graph per rank, per instance count 1 or more (the
# 0/1 rule) and per stride pattern.
def _per_tensor(x, inv_scale, scale, zero_point, levels: int):  # [n], 0-dim
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


def _per_tensor_strided(x, inv_scale, scale, zero_point, levels: int):  # any, 0-dim
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


def _tokens_last(x, inv_scale, scale, zero_point, levels: int):  # [I, T, C], [I, 1, C]
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


def _tokens_last_strided(x, inv_scale, scale, zero_point, levels: int):
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


def _channels_first(x, inv_scale, scale, zero_point, levels: int):  # [I, C, T], [I, C, 1]
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


def _channels_first_strided(x, inv_scale, scale, zero_point, levels: int):
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


def _rows(x, inv_scale, scale, zero_point, levels: int):  # [R, N], [R, 1] (zero: or 0-dim)
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


def _rows_strided(x, inv_scale, scale, zero_point, levels: int):
    return fake_quantize_reciprocal(x, inv_scale, scale, zero_point, levels)


_GRAPHS: list['CompiledGraph'] = []  # every compiled graph of the package


class CompiledGraph:
    """``torch.compile(fn)`` (dynamic shapes, one full graph), compiled on its first call.

    Calling it returns ``fn``'s result, or ``None`` where compilation is off or has
    failed (the caller then runs its eager path).
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled: Callable | None = None
        self.failed = False
        _GRAPHS.append(self)

    def __call__(self, *args):
        if not _State.enabled or self.failed:
            return None
        try:
            if self.compiled is None:
                # dynamic_threads: the C++ kernels read torch.get_num_threads() when
                # they run, not when they were compiled (no cost measured at 1 thread)
                self.compiled = torch.compile(self.fn, dynamic=True, fullgraph=True,
                                              options={'cpp.dynamic_threads': True})
            return self.compiled(*args)
        except Exception as error:  # noqa: BLE001 (whatever the backend raised)
            self.failed = True
            _warn_once(error)
        return None


class _CompiledFunction(CompiledGraph):
    """A compiled element-wise step; where compilation is off or has failed, the eager
    in-place :func:`~igq_plugin.quant.primitives.fake_quantize` gives the (same) result."""

    def __call__(self, x, inv_scale, scale, zero_point, levels: int):
        out = super().__call__(x, inv_scale, scale, zero_point, levels)
        if out is not None:
            return out
        return fake_quantize(x, scale, zero_point, levels.bit_length(), integer_zero_point=True)


def _warn_once(error: Exception) -> None:
    if not _State.warned:
        _State.warned = True
        message = str(error).strip().splitlines()
        logger.warning('torch.compile of the fake-quantizer failed (%s: %s); the eager '
                       'path runs instead. %s=0 skips compiling.', type(error).__name__,
                       message[0] if message else '', ENV_VAR)


_COMPILED = {fn.__name__: _CompiledFunction(fn) for fn in (
    _per_tensor, _per_tensor_strided, _tokens_last, _tokens_last_strided, _channels_first,
    _channels_first_strided, _rows, _rows_strided)}


def _view(x: torch.Tensor, *shape: int) -> torch.Tensor | None:
    """``x.view(*shape)``, or ``None`` where that needs a copy (e.g. a permuted input)."""
    try:
        return x.view(*shape)
    except RuntimeError:
        return None


def _run(layout: str, x: torch.Tensor, view: torch.Tensor | None, scale: torch.Tensor,
         zero_point: torch.Tensor, shape: tuple[int, ...], bits: int,
         inverse: torch.Tensor | None = None) -> torch.Tensor:
    """``layout``'s compiled function on ``view`` with the parameters reshaped to
    ``shape``; where there is no view, the eager path on ``x`` (``shape`` then
    broadcasts against ``x``).

    A 0-dim zero point stays 0-dim for the per-tensor and row layouts, and is expanded
    for the per-instance ones (an ``[I, C]`` copy is cheaper than a second graph).
    ``inverse`` is ``1 / scale`` where the caller has it (computed here otherwise).
    """
    scale = scale.reshape(shape)
    if zero_point.dim():
        zero_point = zero_point.reshape(shape)
    elif layout in ('_tokens_last', '_channels_first'):
        zero_point = zero_point.expand(scale.shape).clone()
    if view is None:
        return fake_quantize(x, scale, zero_point, bits, integer_zero_point=True)
    if not view.is_contiguous():
        layout += '_strided'
    inverse = torch.reciprocal(scale) if inverse is None else inverse.reshape(shape)
    # detached: a compiled graph also guards on the shape and strides of a view's base
    # (so every base shape would compile anew); a detached alias has none
    out = _COMPILED[layout](view.detach(), inverse, scale.detach(), zero_point.detach(),
                            (1 << bits) - 1)
    return out.view(x.shape)


def fake_quantize_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                         bits: int) -> torch.Tensor:
    """Compiled fake-quantization with one (0-dim) scale and zero point: ``x``'s shape."""
    view = _view(x, -1)
    return _run('_per_tensor', x, x if view is None else view, scale, zero_point, (), bits)


def fake_quantize_bounds(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                         bits: int) -> torch.Tensor:
    """Compiled :func:`~igq_plugin.quant.primitives.fake_quantize_bounds`.

    Args:
        x: input.
        lower, upper: bounds of one quantizer (0-dim), or per channel: ``[C]`` for
            ``x = [..., C]``, ``[C, 1, 1]`` for ``x = [B, C, H, W]``.
        bits: bit-width.

    Returns:
        ``x_hat``, shape of ``x``.
    """
    scale, zero_point = qparams_from_bounds(lower, upper, bits)
    if scale.dim() == 0:  # one graph for every contiguous input, whatever its rank
        return fake_quantize_tensor(x, scale, zero_point, bits)
    channels = scale.shape[0]
    if scale.dim() == 1 and x.shape[-1] == channels:  # [1, T, C] with [1, 1, C]
        view = _view(x, 1, -1, channels)
        return _run('_tokens_last', x, view, scale, zero_point,
                    (1, 1, channels) if view is not None else scale.shape, bits)
    if scale.shape == (channels, 1, 1) and x.dim() == 4 and x.shape[1] == channels:
        view = _view(x, x.shape[0], channels, -1)  # [B, C, T] with [1, C, 1]
        return _run('_channels_first', x, view, scale, zero_point,
                    (1, channels, 1) if view is not None else scale.shape, bits)
    return fake_quantize(x, scale, zero_point, bits, integer_zero_point=True)


def fake_quantize_instances(view: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                            bits: int, channel_dim: int,
                            inverse: torch.Tensor | None = None) -> torch.Tensor:
    """Compiled fake-quantization with per-instance and channel parameters.

    Args:
        view: :func:`~igq_plugin.grouping.layout.split_instances`' view of the input,
            ``[I, *tokens, C]`` (``channel_dim=-1``) or ``[I, C, *spatial]`` (``1``).
        scale: ``[I, C]``.
        zero_point: ``[I, C]``, or 0-dim (shared by every item); integers.
        bits: bit-width.
        channel_dim: ``-1`` or ``1``.
        inverse: ``1 / scale``, ``[I, C]``, where the caller has it.

    Returns:
        ``x_hat``, shape of ``view``.
    """
    instances, channels = scale.shape
    rank = view.dim() - 2
    if channel_dim == -1:  # [I, T, C] with [I, 1, C] parameters
        flat = _view(view, instances, -1, channels)
        shape = ((instances, 1, channels) if flat is not None
                 else (instances,) + (1,) * rank + (channels,))
        return _run('_tokens_last', view, flat, scale, zero_point, shape, bits, inverse)
    flat = _view(view, instances, channels, -1)  # [I, C, T] with [I, C, 1] parameters
    shape = (instances, channels, 1) if flat is not None else (instances, channels) + (1,) * rank
    return _run('_channels_first', view, flat, scale, zero_point, shape, bits, inverse)


def fake_quantize_rows(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                       bits: int, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """Compiled fake-quantization of a map ``[..., N]`` with per-row parameters.

    Args:
        x: ``[..., N]``, ``R`` rows.
        scale: ``[R]``.
        zero_point: ``[R]``, or 0-dim (shared by every row); integers.
        bits: bit-width.
        inverse: ``1 / scale``, ``[R]``, where the caller has it.

    Returns:
        ``x_hat``, shape of ``x``.
    """
    rows = _view(x, -1, x.shape[-1])  # [R, N] with [R, 1] parameters
    shape = (-1, 1) if rows is not None else x.shape[:-1] + (1,)
    return _run('_rows', x, rows, scale, zero_point, shape, bits, inverse)

"""Quantizers part: elements per second of the activation quantizers alone.

On Swin-T's token x channel and windowed-attention shapes at ``--image-size``: IGQ
(G=8), the plugin's per-tensor, static-group (G=8) and upper-bound quantizers
(:mod:`igq_plugin.quantizers`, each calibrated on the tensor it is timed on), and
``torch.fake_quantize_per_tensor_affine``. IGQ's first pass is also timed alone
(``IGQQuantizer.item_parameters``: every item's range -> its group's scale and zero).

Against memory bandwidth: reading the tensor once (``torch.sum``) and copying it
(``torch.clone``), and the two-pass roofline of a quantizer whose ranges come from the
tensor itself (IGQ, the upper bound): a read, then a read and a write,
``1 / (1 / read + 1 / copy)`` elements per second. A one-pass quantizer with
calibrated parameters (per-tensor) can at best copy, so where it does, IGQ can reach
at most ``roofline / copy`` of its throughput.
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from typing import Callable

import torch

from igq_plugin.quant import QuantMode, qmax, qparams_from_bounds, quant_mode
from igq_plugin.quantizers import (ActivationQuantizer, IGQQuantizer, PerTensorQuantizer,
                                   StaticGroupQuantizer, UpperBoundQuantizer)

from .common import BITS, PAD_DIVISOR, log, release, size_text, synchronize, table

TITLE = 'Activation quantizers alone'
# Swin-T (mmdet's config): embed dims 96, heads per stage, window 7, MLP ratio 4
SWIN_T_CHANNELS = 96
SWIN_T_HEADS = (3, 6, 12, 24)
SWIN_T_WINDOW = 7
MLP_RATIO = 4
IGQ, PER_TENSOR = 'igq G=8', 'per-tensor'
QUANTIZERS = (IGQ, PER_TENSOR, 'static-group G=8', 'upper-bound')
TORCH = 'torch per-tensor'
IGQ_RANGES = 'igq G=8 ranges'  # IGQ's first pass alone
READ, COPY = 'read (sum)', 'copy (clone)'  # the memory-bandwidth references
TIMED = QUANTIZERS + (IGQ_RANGES, TORCH, READ, COPY)


def swin_t_shapes(size: tuple[int, int]) -> list[dict]:
    """Activation shapes of Swin-T on a ``size`` image (padded to 32 as the model sees).

    Per stage ``i``: ``[1, tokens, C]`` inputs of qkv/fc1 (``C = 96 * 2^i``) and of fc2
    (``4C``), and the softmax maps ``[windows * heads, 49, 49]``.
    """
    height, width = (math.ceil(s / PAD_DIVISOR) * PAD_DIVISOR for s in size)
    shapes = []
    for stage, heads in enumerate(SWIN_T_HEADS):
        h, w = height // 4 // 2 ** stage, width // 4 // 2 ** stage
        channels = SWIN_T_CHANNELS * 2 ** stage
        windows = math.ceil(h / SWIN_T_WINDOW) * math.ceil(w / SWIN_T_WINDOW)
        tokens = SWIN_T_WINDOW ** 2
        shapes += [
            dict(name=f'stage{stage} qkv/fc1 input', kind='channel', shape=(1, h * w, channels)),
            dict(name=f'stage{stage} fc2 input', kind='channel',
                 shape=(1, h * w, channels * MLP_RATIO)),
            dict(name=f'stage{stage} attention', kind='softmax',
                 shape=(windows * heads, tokens, tokens)),
        ]
    return shapes


def activation(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A tensor like a Swin activation: channels with spread-out ranges and outliers
    (``'channel'``), or rows of a softmax with varying sharpness (``'softmax'``)."""
    if kind == 'softmax':
        sharpness = torch.exp(torch.randn(shape[0], shape[1], 1, generator=gen))
        return torch.softmax(torch.randn(shape, generator=gen) * sharpness, dim=-1)
    channels = shape[-1]
    scale = torch.exp(torch.randn(channels, generator=gen))  # log-normal channel scales
    offset = torch.randn(channels, generator=gen)
    return torch.randn(shape, generator=gen) * scale + offset


def calibrated(quantizer: ActivationQuantizer, x: torch.Tensor) -> ActivationQuantizer:
    """Calibrate ``quantizer`` on ``x`` (one image) and leave it in quantized mode."""
    quantizer.num_instances = 1 if quantizer.kind == 'channel' else None
    with torch.no_grad(), quant_mode(quantizer, QuantMode.CALIBRATE):
        quantizer(x)
    quantizer.finalize()
    quantizer.reset_statistics()
    quantizer.mode = QuantMode.QUANTIZED
    return quantizer


def candidates(kind: str, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Every label of :data:`TIMED` as a closure over ``x`` (the quantizers calibrated
    on ``x``)."""
    channels = x.shape[-1] if kind == 'channel' else None
    quantizers = {
        # G=8 only: other candidates would only lengthen calibration, not the run-time path
        IGQ: IGQQuantizer(BITS, channels, kind, groups=8, candidates=(8,)),
        PER_TENSOR: PerTensorQuantizer(BITS, channels, kind),
        'static-group G=8': StaticGroupQuantizer(BITS, channels, kind, groups=8),
        'upper-bound': UpperBoundQuantizer(BITS, channels, kind),
    }
    quantizers = {label: calibrated(q.to(x.device), x) for label, q in quantizers.items()}
    fns = {label: functools.partial(q, x) for label, q in quantizers.items()}
    fns[IGQ_RANGES] = functools.partial(quantizers[IGQ].item_parameters, x)
    lower, upper = torch.aminmax(x)
    scale, zero = qparams_from_bounds(lower, upper, BITS)
    fns[TORCH] = functools.partial(torch.fake_quantize_per_tensor_affine, x, float(scale),
                                   int(zero), 0, qmax(BITS))
    fns[READ] = functools.partial(torch.sum, x)
    fns[COPY] = functools.partial(torch.clone, x)
    return fns


def seconds_per_call(fns: dict[str, Callable[[], object]], device: torch.device,
                     min_time: float, blocks: int = 7) -> dict[str, float]:
    """Median seconds of one call of every ``fns[name]()``, the blocks interleaved.

    Block ``k`` of every function runs before block ``k + 1`` of any, so a slow spell
    of the machine falls on all of them alike and their ratios stay fair. The calls
    per block are chosen from a warm-up so that each function's blocks together take
    about ``min_time`` seconds.
    """
    calls = {}
    for name, fn in fns.items():
        fn()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        single = max(time.perf_counter() - start, 1e-9)
        calls[name] = max(1, math.ceil(min_time / blocks / single))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(values) for name, values in times.items()}


def add_ratios(row: dict) -> None:
    """The ratios derived from a row's elements per second (see the module doc)."""
    speed = {label: row[label]['elements_per_second'] for label in TIMED}
    roofline = 1 / (1 / speed[READ] + 1 / speed[COPY])
    row.update(two_pass_roofline_elements_per_second=roofline,
               igq_over_per_tensor=speed[IGQ] / speed[PER_TENSOR],
               igq_over_roofline=speed[IGQ] / roofline,
               per_tensor_over_copy=speed[PER_TENSOR] / speed[COPY],
               roofline_over_copy=roofline / speed[COPY])


def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Elements per second of each quantizer and reference on each Swin-T shape."""
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for spec in swin_t_shapes(args.image_size):
        log(f'quantizers, {spec["name"]} {spec["shape"]}')
        x = activation(spec['kind'], spec['shape'], gen).to(device)
        with torch.no_grad():
            seconds = seconds_per_call(candidates(spec['kind'], x), device, args.min_time)
        row = dict(name=spec['name'], kind=spec['kind'], shape=list(spec['shape']),
                   elements=x.numel())
        row.update({label: dict(seconds=s, elements_per_second=x.numel() / s)
                    for label, s in seconds.items()})
        add_ratios(row)
        rows.append(row)
        del x
        release(device)
    return dict(image_size=list(args.image_size), bits=BITS, min_time=args.min_time,
                statistic='median of 7 interleaved blocks', rows=rows)


def markdown(part: dict) -> str:
    """The part's table: one row per shape, Melements/s and the derived ratios."""
    return '\n'.join([
        f'## {TITLE} (W{part["bits"]}, Swin-T shapes at {size_text(part["image_size"])}; '
        f'Melements/s)', '',
        table(['shape', 'elements', *TIMED, 'two-pass roofline', 'igq / per-tensor',
               'igq / roofline', 'per-tensor / copy'],
              [[f'{r["name"]} {tuple(r["shape"])}', r['elements']]
               + [r[label]['elements_per_second'] / 1e6 for label in TIMED]
               + [r['two_pass_roofline_elements_per_second'] / 1e6, r['igq_over_per_tensor'],
                  r['igq_over_roofline'], r['per_tensor_over_copy']] for r in part['rows']]),
        '', 'two-pass roofline: 1 / (1 / read + 1 / copy), the most a quantizer that ranges '
        'its own input first can do; where per-tensor runs at copy speed, igq / per-tensor '
        'is at most roofline / copy (median over the shapes: '
        f'{statistics.median(r["roofline_over_copy"] for r in part["rows"]):.3g}).'])

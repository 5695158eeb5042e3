#!/usr/bin/env python
"""Run-time, calibration and memory figures of IGQ-ViT on mmdet's Mask R-CNN Swin-T.

Everything runs side by side in one process (the memory part starts one fresh child
process per variant), on randomly initialised weights (nothing is downloaded) and
seeded synthetic images that look like natural images (smoothed multi-scale noise).
Models are built from mmdet's config through MMEngine's registry, quantized exactly
as a config using the plugin does (``IGQBackbone``), then prepared with the functions
``IGQCalibrationHook`` delegates to (``quantize_mm_model``,
``calibrate_mm_model``, ``check_quantized``). All quantized variants are W4/A4.

Parts (``--parts``, default all):

- ``inference``: seconds per image of ``model(..., mode='predict')`` for float,
  per-tensor, static-group (G=8), igq-fixed (G=8, G=16) and upper-bound; ratio to float.
  The images are timed round-robin across the variants (all prepared and warmed up
  first), so a change of load on the machine reaches every variant alike; mean and
  median over the images. Then, in a round-robin of its own (``--feature-repeats``
  times per image), the backbone and neck alone (``extract_feat``: what the default
  protocol quantizes), whose median ratio is free of the heads' data-dependent cost
  (RoIAlign's work grows with the proposals' sizes, which quantization changes) and of
  the state that the whole-detector forward just before would leave behind.
- ``quantizers``: elements/second of the activation quantizers alone on Swin-T's
  token x channel and windowed-attention shapes: IGQ (G=8), the plugin's per-tensor,
  static-group (G=8) and upper-bound quantizers, each with its compiled run-time path
  (:mod:`igq_plugin.quant.compiled`) and eager, and
  ``torch.fake_quantize_per_tensor_affine``; plus each one's first call (which compiles
  a layout not seen before) and a cached call. Against memory bandwidth: reading the
  tensor once (``torch.sum``) and copying it (``torch.clone``), and the two-pass
  roofline of a quantizer whose ranges come from the tensor itself (IGQ, the upper
  bound): a read, then a read and a write, ``1 / (1 / read + 1 / copy)`` elements per
  second. A one-pass quantizer with calibrated parameters (per-tensor) can at best
  copy, so where it does, IGQ can reach at most ``roofline / copy`` of its throughput.
  IGQ's first pass is also timed alone (ranges -> per-item parameters).
- ``calibration``: wall seconds of calibration + group-size allocation
  (``method='igq'``, G_avg=8, 1 image), by phase, and in float forwards.
- ``memory``: peak resident memory (and CUDA peak allocation) of float vs igq-fixed
  (G=8) evaluation, one fresh child process per variant: over the whole evaluation
  (the warm-up image, whose first quantized call imports and runs the compiler, and the
  timed images) and after the warm-up alone.

``--reuse-freed-memory`` runs the inference, quantizers and memory parts with freed
host memory kept in glibc's heap (:mod:`igq_plugin.host_memory`), float included.

Writes ``--out`` (JSON) and a markdown table next to it (``benchmark.md``), and
prints the table. Small CPU run::

    python benchmarks/benchmark.py --image-size 224x320 --images 1 --threads 1 \\
        --calib-image-size 64x96
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import math
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from mmengine.hub import get_config
from mmengine.logging import print_log
from mmengine.registry import MODELS
from torch import nn

import igq_plugin.mm  # noqa: F401  (registers IGQBackbone in MMEngine's root MODELS)
import igq_plugin.calibration as core_calibration_module
from igq_plugin import check_quantized
from igq_plugin.host_memory import reuse_freed_memory
from igq_plugin.mm import calibrate_mm_model, quantize_mm_model
from igq_plugin.mm import calibration as mm_calibration_module
from igq_plugin.nn import igq_quantizers
from igq_plugin.search import FISHER_ESTIMATORS
from igq_plugin.quant import (ActivationQuantizer, IGQQuantizer, PerTensorQuantizer, QuantMode,
                              StaticGroupQuantizer, UpperBoundQuantizer, compiled, qmax,
                              qparams_from_bounds, quant_mode)

CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
PARTS = ('inference', 'quantizers', 'calibration', 'memory')
SEARCHES = ('fast', 'naive', 'fisher', 'fisher-full')
BITS = 4
PAD_DIVISOR = 32  # the config's data_preprocessor pads images to multiples of 32
# Swin-T (mmdet's config): embed dims 96, heads per stage, window 7, MLP ratio 4
SWIN_T_CHANNELS = 96
SWIN_T_HEADS = (3, 6, 12, 24)
SWIN_T_WINDOW = 7
MLP_RATIO = 4
MIB = 2 ** 20


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: ``quant`` is the backbone's ``quant=dict(...)``
    entry, ``None`` for the float model."""

    name: str
    quant: dict | None = None


def quantized(method: str, groups: int = 8) -> dict:
    """The ``quant`` config entry of a W4/A4 variant."""
    return dict(method=method, w_bits=BITS, a_bits=BITS, groups=groups)


FLOAT = Variant('float')
INFERENCE_VARIANTS = (
    FLOAT,
    Variant('per-tensor', quantized('per-tensor')),
    Variant('static-group G=8', quantized('static-group', 8)),
    # the run-time path of 'igq' (allocation only changes each layer's G)
    Variant('igq-fixed G=8', quantized('igq-fixed', 8)),
    Variant('igq-fixed G=16', quantized('igq-fixed', 16)),
    Variant('upper-bound', quantized('upper-bound')),
)
MEMORY_VARIANTS = (FLOAT, INFERENCE_VARIANTS[3])
CALIBRATION_VARIANT = Variant('igq G_avg=8', quantized('igq', 8))
# the calibration's callees timed by the calibration part, in call order, by module
MM_CALIBRATION_PHASES = ('build_predictor',)
# sensitivity_tables: the exact search (fast / naive); fisher_tables: sensitivity='fisher'
# and 'fisher-full'
CORE_CALIBRATION_PHASES = ('finalize_calibration', 'sensitivity_tables', 'fisher_tables',
                           'allocate_groups')
CALIBRATION_PHASES = MM_CALIBRATION_PHASES + CORE_CALIBRATION_PHASES
# the quantizers part: label -> the quantizer's name in igq_plugin.quant.compiled; each
# is timed with its compiled path (the label) and eager (the label + EAGER)
QUANTIZER_LABELS = {'igq G=8': 'igq', 'per-tensor': 'per-tensor',
                    'static-group G=8': 'static-group', 'upper-bound': 'upper-bound'}
EAGER = ' eager'
# the quantizers part's memory-bandwidth references (see the module docstring)
READ, COPY = 'read (sum)', 'copy (clone)'
# IGQ's first pass alone (ranges -> per-item parameters), compiled where IGQ is
IGQ_RANGES = 'igq G=8 ranges'


# -- arguments ---------------------------------------------------------------------------

def image_size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``800x1216``) into ``(H, W)``, each at least 32 pixels."""
    parts = text.lower().split('x')
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'image size {text!r}: expected HxW with integers, e.g. 800x1216') from None
    if height < PAD_DIVISOR or width < PAD_DIVISOR:
        raise argparse.ArgumentTypeError(
            f'image size {text!r}: height and width must be at least {PAD_DIVISOR} pixels '
            f'(Swin-T downsamples by 32)')
    return height, width


def part_list(text: str) -> tuple[str, ...]:
    """Parse a comma-separated subset of :data:`PARTS`."""
    parts = tuple(p.strip() for p in text.split(',') if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f'--parts {text!r}: unknown {unknown}; allowed are '
                                         f'{",".join(PARTS)}')
    return parts


def positive(kind: type) -> Callable[[str], int | float]:
    """Argparse type: a positive ``int`` or ``float``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a {kind.__name__}') from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f'{text!r}: must be positive')
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='benchmark.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--parts', type=part_list, default=PARTS,
                        help=f'comma-separated subset of {",".join(PARTS)} (default: all)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='device of the models and inputs (default: cpu)')
    parser.add_argument('--threads', type=positive(int), default=None,
                        help='torch.set_num_threads (default: torch\'s choice)')
    parser.add_argument('--seed', type=int, default=0, help='seed of weights and images')
    parser.add_argument('--image-size', type=image_size, default=(800, 1216), metavar='HxW',
                        help='evaluated image size (default: 800x1216)')
    parser.add_argument('--calib-image-size', type=image_size, default=None, metavar='HxW',
                        help='image size of the calibration part (default: --image-size)')
    parser.add_argument('--search', nargs='+', choices=SEARCHES, default=['fast'],
                        help='sensitivity searches to time in the calibration part (fast: the '
                             'default exact search; naive: one full forward per layer and '
                             'candidate, slow; fisher, fisher-full: sensitivity=\'fisher\', '
                             '\'fisher-full\'); the first is '
                             'the reference of "layers with another G"')
    parser.add_argument('--search-rois', type=positive(int), nargs='*', default=[],
                        metavar='K',
                        help='also time the fast search on only the K best-scored float '
                             'proposals per image (IGQCalibrationHook(search_rois=K)); '
                             'reports how many layers get another G than with all RoIs')
    parser.add_argument('--images', type=positive(int), default=3,
                        help='timed images per variant, after 1 warm-up (default: 3)')
    parser.add_argument('--feature-repeats', type=positive(int), default=3,
                        help='backbone+neck timings per image and variant in the inference '
                             'part (their own round-robin; the median is reported; '
                             'default: 3)')
    parser.add_argument('--min-time', type=positive(float), default=0.5,
                        help='seconds per quantizer throughput measurement (default: 0.5)')
    parser.add_argument('--score-thr', type=float, default=0.0,
                        help='RoI head score threshold (default 0: every image yields '
                             'max_per_img=100 detections, whatever the random weights)')
    parser.add_argument('--memory-repeats', type=positive(int), default=3,
                        help='fresh processes per variant in the memory part; ratios of '
                             'the medians (default: 3)')
    parser.add_argument('--reuse-freed-memory', action='store_true',
                        help='keep freed host memory for reuse '
                             '(IGQCalibrationHook(reuse_freed_memory=True)) in the inference, '
                             'quantizers and memory parts, for every variant, float '
                             'included, from after calibration on')
    parser.add_argument('--out', default='work_dirs/benchmark/benchmark.json',
                        help='JSON result file; benchmark.md is written next to it')
    parser.add_argument('--_memory-child', dest='memory_child', default=None,
                        help=argparse.SUPPRESS)  # internal: one variant of the memory part
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments (exits with status 2 and a message on errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device cuda requested but CUDA is not available here '
                     f'(torch {torch.__version__}, built for CUDA {torch.version.cuda}, '
                     f'{torch.cuda.device_count()} visible devices); use --device cpu')
    names = [v.name for v in MEMORY_VARIANTS]
    if args.memory_child is not None and args.memory_child not in names:
        parser.error(f'--_memory-child {args.memory_child!r}: allowed are {names}')
    if args.calib_image_size is None:
        args.calib_image_size = args.image_size
    return args


# -- machine, timing ---------------------------------------------------------------------

def machine_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else platform.processor() or platform.machine())
    return dict(platform=platform.platform(), python=platform.python_version(),
                cpu_count=os.cpu_count(), torch=torch.__version__,
                torch_threads=torch.get_num_threads(), device=str(device), device_name=name,
                cuda=torch.version.cuda if device.type == 'cuda' else None)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA) so wall-clock times cover the work."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


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


def release(device: torch.device) -> None:
    """Free what deleted models held, before the next variant."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


# -- images and models -------------------------------------------------------------------

def natural_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A seeded ``[3, H, W]`` uint8 image with natural-image statistics.

    Sum of bilinearly upsampled noise octaves with amplitude ~ 1/frequency (the
    1/f spectrum of photographs), a luminance component shared by the channels plus
    weaker colour, random exposure and contrast, and a little pixel noise.
    """
    gen = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, 3, height, width)
    for octave in range(1, 8):
        cells = 2 ** octave  # grid cells along the shorter side
        grid = (max(2, round(cells * height / min(height, width))),
                max(2, round(cells * width / min(height, width))))
        luminance = torch.randn(1, 1, *grid, generator=gen)
        colour = 0.4 * torch.randn(1, 3, *grid, generator=gen)
        layer = F.interpolate(luminance + colour, size=(height, width), mode='bilinear',
                              align_corners=False)
        image += layer / cells
    image += 0.01 * torch.randn(image.shape, generator=gen)
    image = (image - image.mean()) / image.std()
    contrast = 40 + 30 * torch.rand((), generator=gen)
    exposure = 90 + 80 * torch.rand((), generator=gen)
    return (image[0] * contrast + exposure).clamp(0, 255).round().to(torch.uint8)


def make_batch(model: nn.Module, image: torch.Tensor) -> dict:
    """Preprocess one image as the test pipeline would: ``dict(inputs, data_samples)``."""
    from mmdet.structures import DetDataSample
    height, width = image.shape[-2:]
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                         scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        return model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)


def make_batches(model: nn.Module, size: tuple[int, int], count: int, seed: int) -> list[dict]:
    """``count`` preprocessed single-image batches of :func:`natural_image` images."""
    return [make_batch(model, natural_image(*size, seed=seed + i)) for i in range(count)]


def calibration_batches(model: nn.Module, size: tuple[int, int], seed: int) -> list[dict]:
    """The one calibration image (seeded apart from the evaluated images)."""
    return make_batches(model, size, 1, seed=seed + 100_000)


@functools.lru_cache(maxsize=1)
def _base_model_cfg():
    from mmdet.utils import register_all_modules
    register_all_modules()  # mmdet's modules, default scope 'mmdet'
    return get_config(CONFIG).model


def model_cfg(quant: dict | None, score_thr: float):
    """mmdet's Swin-T Mask R-CNN config, randomly initialised, quantized when ``quant``."""
    cfg = copy.deepcopy(_base_model_cfg())
    cfg.backbone.init_cfg = None  # no pretrained download
    cfg.test_cfg.rcnn.score_thr = score_thr
    if quant is not None:
        cfg.backbone.update(type='IGQBackbone', wrapped_type='SwinTransformer', quant=quant)
    return cfg


def build_float(seed: int, score_thr: float) -> nn.Module:
    """The float detector with seeded random weights, on the CPU, in eval mode."""
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg(None, score_thr))
    model.eval()
    return model


def build_variant(variant: Variant, float_state: dict, score_thr: float,
                  device: torch.device) -> nn.Module:
    """Build ``variant`` with the float model's weights, on ``device``, in eval mode.

    Quantized variants are converted as ``IGQCalibrationHook``'s ``before_run`` does
    (backbone and neck; still uncalibrated).
    """
    model = MODELS.build(model_cfg(variant.quant, score_thr))
    if variant.quant is not None:
        quantize_mm_model(model)
    result = model.load_state_dict(float_state, strict=False)
    stray = result.unexpected_keys + [k for k in result.missing_keys if 'quantizer' not in k]
    if stray:
        raise RuntimeError(f'{variant.name}: float weights do not fit: {stray[:5]}')
    model.to(device)
    model.eval()
    return model


def calibrate(model: nn.Module, batches: list[dict], reuse_prefix: bool = True,
              search_rois: int | None = None, sensitivity: str = 'exact'):
    """Calibrate as the hook does; returns the :class:`CalibrationReport`."""
    report = calibrate_mm_model(model, batches, progress=None, reuse_prefix=reuse_prefix,
                                search_rois=search_rois, sensitivity=sensitivity)
    check_quantized(model)
    return report


def prepared_variant(variant: Variant, float_state: dict, args: argparse.Namespace,
                     device: torch.device, calib_size: tuple[int, int]):
    """Built and (for quantized variants) calibrated model, with its report or ``None``."""
    model = build_variant(variant, float_state, args.score_thr, device)
    if variant.quant is None:
        return model, None
    return model, calibrate(model, calibration_batches(model, calib_size, args.seed))


def predict(model: nn.Module, batch: dict) -> list:
    """One ``predict`` forward (inference mode, no autograd)."""
    with torch.no_grad():
        return model(batch['inputs'], batch['data_samples'], mode='predict')


def extract_features(model: nn.Module, batch: dict):
    """Backbone and neck alone (what the default protocol quantizes) on a preprocessed
    batch: the FPN outputs."""
    with torch.no_grad():
        return model.extract_feat(batch['inputs'])


def time_predict(model: nn.Module, batches: list[dict], device: torch.device) -> dict:
    """Seconds per image after one warm-up forward, and detections per image."""
    predict(model, batches[0])
    times, detections = [], []
    for batch in batches:
        synchronize(device)
        start = time.perf_counter()
        results = predict(model, batch)
        synchronize(device)
        times.append(time.perf_counter() - start)
        detections.append(len(results[0].pred_instances))
    return dict(seconds_per_image=statistics.mean(times), seconds=times,
                detections_per_image=statistics.mean(detections))


# -- part 1: inference -------------------------------------------------------------------

def apply_reuse_freed_memory() -> None:
    """``--reuse-freed-memory``: as the hook applies it after calibration; refuses to
    report figures under a setting that did not take effect."""
    if not reuse_freed_memory():
        raise RuntimeError('--reuse-freed-memory needs glibc (Linux); it is not available')


def run_inference(args: argparse.Namespace, device: torch.device, float_state: dict) -> dict:
    """Seconds per image of every variant, and the ratio to float.

    Every variant is prepared and warmed up first (one forward, which also compiles its
    run-time kernels); then the images are timed round-robin, image by image across the
    variants, so that a change of load on the machine (another job on a core that
    shares the cache and the memory bus) reaches every variant alike.
    """
    prepared = []
    for variant in INFERENCE_VARIANTS:
        print_log(f'benchmark: inference, preparing {variant.name}', logger='current')
        model, report = prepared_variant(variant, float_state, args, device, args.image_size)
        batches = make_batches(model, args.image_size, args.images, args.seed)
        predict(model, batches[0])  # warm-up
        prepared.append((variant, model, report, batches, [], [], []))
    if args.reuse_freed_memory:
        apply_reuse_freed_memory()
    for index in range(args.images):
        print_log(f'benchmark: inference, image {index + 1} of {args.images}, every variant',
                  logger='current')
        for _, model, _, batches, times, feature_times, detections in prepared:
            synchronize(device)
            start = time.perf_counter()
            results = predict(model, batches[index])
            synchronize(device)
            times.append(time.perf_counter() - start)
            detections.append(len(results[0].pred_instances))
    for index in range(args.images):
        print_log(f'benchmark: inference, backbone+neck, image {index + 1} of {args.images}, '
                  f'{args.feature_repeats} x every variant', logger='current')
        for _ in range(args.feature_repeats):
            for _, model, _, batches, _, feature_times, _ in prepared:
                synchronize(device)
                start = time.perf_counter()
                extract_features(model, batches[index])
                synchronize(device)
                feature_times.append(time.perf_counter() - start)
    rows = [dict(variant=variant.name, quant=variant.quant,
                 seconds_per_image=statistics.mean(times), seconds=times,
                 median_seconds_per_image=statistics.median(times),
                 features_seconds_per_image=statistics.median(feature_times),
                 features_seconds=feature_times,
                 detections_per_image=statistics.mean(detections),
                 calib_seconds=report.seconds if report else None,
                 gbops=report.gbops if report else None)
            for variant, _, report, _, times, feature_times, detections in prepared]
    del prepared
    release(device)
    reference, median_reference, features_reference = (rows[0][key] for key in (
        'seconds_per_image', 'median_seconds_per_image', 'features_seconds_per_image'))
    for row in rows:
        row['ratio_to_float'] = row['seconds_per_image'] / reference
        row['median_ratio_to_float'] = row['median_seconds_per_image'] / median_reference
        row['features_ratio_to_float'] = row['features_seconds_per_image'] / features_reference
    # seconds_per_image: mean over the images; features_seconds_per_image: median over
    # images x feature_repeats, timed in their own round-robin
    return dict(image_size=list(args.image_size), images=args.images, warmup=1,
                schedule='round-robin', feature_repeats=args.feature_repeats,
                features_statistic='median', rows=rows)


# -- part 2: quantizers alone ------------------------------------------------------------

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


def quantizer_candidates(kind: str, channels: int | None, x: torch.Tensor
                         ) -> dict[str, Callable[[], torch.Tensor]]:
    """The fake-quantizers compared, each calibrated on ``x``, as closures: every label
    of :data:`QUANTIZER_LABELS` compiled and eager, and torch's per-tensor quantizer."""
    device = x.device
    quantizers = {
        # G=8 only: other candidates would only lengthen calibration, not the run-time path
        'igq G=8': IGQQuantizer(BITS, channels, kind, groups=8, candidates=(8,)),
        'per-tensor': PerTensorQuantizer(BITS, channels, kind),
        'static-group G=8': StaticGroupQuantizer(BITS, channels, kind, groups=8),
        'upper-bound': UpperBoundQuantizer(BITS, channels, kind),
    }
    lower, upper = torch.aminmax(x)
    scale, zero = qparams_from_bounds(lower, upper, BITS)
    scale, zero = float(scale), int(zero)
    fns = {}
    for label, quantizer in quantizers.items():
        quantizer = calibrated(quantizer.to(device), x)
        fns[label] = functools.partial(call_quantizer, quantizer, x, True)
        fns[label + EAGER] = functools.partial(call_quantizer, quantizer, x, False)
        if label == 'igq G=8':  # its first pass alone: ranges -> per-item parameters
            fns[IGQ_RANGES] = functools.partial(call_item_parameters, quantizer, x)
    fns['torch per-tensor'] = lambda: torch.fake_quantize_per_tensor_affine(
        x, scale, zero, 0, qmax(BITS))
    # memory-bandwidth references: one read of x; one read and one write
    fns[READ] = functools.partial(torch.sum, x)
    fns[COPY] = functools.partial(torch.clone, x)
    return fns


def call_quantizer(quantizer: ActivationQuantizer, x: torch.Tensor,
                   compile_paths: bool) -> torch.Tensor:
    """``quantizer(x)`` with the compiled paths switched on or off."""
    with compiled.compiling(compile_paths):
        return quantizer(x)


def call_item_parameters(quantizer: IGQQuantizer, x: torch.Tensor):
    """IGQ's range pass alone, as its compiled run-time path runs it: every item's
    range on ``x`` -> its group's scale and zero point."""
    with compiled.compiling(True):
        return quantizer.item_parameters(x)


def first_calls(fns: dict[str, Callable[[], object]], device: torch.device) -> dict[str, dict]:
    """Seconds of the first and the second call of every ``fns[name]()``, and the graphs
    ``torch.compile`` built during them (a layout's first call compiles it; the second
    call, and later shapes of that layout, use the cached kernel)."""
    from torch._dynamo.utils import counters  # loaded with torch.compile anyway
    calls = {}
    for name, fn in fns.items():
        graphs = counters['stats']['unique_graphs']
        seconds = []
        for _ in range(2):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        calls[name] = dict(first_call_seconds=seconds[0], cached_call_seconds=seconds[1],
                           graphs_compiled=counters['stats']['unique_graphs'] - graphs)
    return calls


def run_quantizers(args: argparse.Namespace, device: torch.device) -> dict:
    """Elements per second of each quantizer, compiled and eager, on each Swin-T
    activation shape; first-call (compile) and cached-call seconds."""
    gen = torch.Generator().manual_seed(args.seed)
    if args.reuse_freed_memory:
        apply_reuse_freed_memory()
    rows = []
    for spec in swin_t_shapes(args.image_size):
        print_log(f'benchmark: quantizers, {spec["name"]} {spec["shape"]}', logger='current')
        x = activation(spec['kind'], spec['shape'], gen).to(device)
        channels = spec['shape'][-1] if spec['kind'] == 'channel' else None
        row = dict(name=spec['name'], kind=spec['kind'], shape=list(spec['shape']),
                   elements=x.numel())
        with torch.no_grad():
            fns = quantizer_candidates(spec['kind'], channels, x)
            first = first_calls(fns, device)
            timed = seconds_per_call(fns, device, args.min_time)
            with compiled.compiling(True):  # as the timed calls of the labels
                paths = {label: compiled.use_compiled(name, x) for label, name in
                         QUANTIZER_LABELS.items()}
        for label, seconds in timed.items():
            row[label] = dict(seconds=seconds, elements_per_second=x.numel() / seconds,
                              **first[label])
            if label in paths:
                row[label]['compiled_path'] = paths[label]
        row['igq_over_per_tensor'] = (row['igq G=8']['elements_per_second']
                                      / row['per-tensor']['elements_per_second'])
        read, copy_ = (row[k]['elements_per_second'] for k in (READ, COPY))
        roofline = 1 / (1 / read + 1 / copy_)
        row['two_pass_roofline_elements_per_second'] = roofline
        row['igq_over_roofline'] = row['igq G=8']['elements_per_second'] / roofline
        row['per_tensor_over_copy'] = row['per-tensor']['elements_per_second'] / copy_
        row['roofline_over_copy'] = roofline / copy_
        row['compiled_over_eager'] = {label: row[label + EAGER]['seconds'] / row[label]['seconds']
                                      for label in QUANTIZER_LABELS}
        rows.append(row)
        del x
        release(device)
    return dict(image_size=list(args.image_size), bits=BITS, min_time=args.min_time,
                compile=dict(enabled=compiled.compile_enabled(),
                             devices=sorted(compiled.COMPILED_DEVICES),
                             min_elements=compiled.MIN_COMPILED_ELEMENTS),
                rows=rows)


# -- part 3: calibration and allocation --------------------------------------------------

@contextlib.contextmanager
def timed_callees(module, names: Sequence[str]) -> Iterator[dict[str, float]]:
    """Time the functions ``names`` as called from ``module`` (patched for the block).

    Yields ``{name: seconds}``, filled as they run; names ``module`` does not hold are
    left out.
    """
    seconds: dict[str, float] = {}
    originals = {n: getattr(module, n) for n in names if hasattr(module, n)}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(module, name, timed(name, fn))
        yield seconds
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def calibrate_once(args: argparse.Namespace, device: torch.device, float_state: dict,
                   search: str, float_seconds: float, search_rois: int | None = None) -> dict:
    """One calibration + allocation of the igq variant with the ``fast``, ``naive`` or
    ``fisher`` sensitivity search (on the ``search_rois`` best float proposals, or all);
    seconds by phase and in float forwards of one image."""
    label = search if search_rois is None else f'{search} top-{search_rois} RoIs'
    print_log(f'benchmark: calibration, {CALIBRATION_VARIANT.name}, {label} search',
              logger='current')
    model = build_variant(CALIBRATION_VARIANT, float_state, args.score_thr, device)
    batches = calibration_batches(model, args.calib_image_size, args.seed)
    synchronize(device)
    with timed_callees(mm_calibration_module, MM_CALIBRATION_PHASES) as mm_seconds, \
            timed_callees(core_calibration_module, CORE_CALIBRATION_PHASES) as seconds:
        report = calibrate(model, batches, reuse_prefix=search != 'naive',
                           search_rois=search_rois,
                           sensitivity=search if search in FISHER_ESTIMATORS else 'exact')
    seconds.update(mm_seconds)
    synchronize(device)
    layers = igq_quantizers(model)
    # the rest: the calibration forwards (plus bookkeeping, and any phase listed in
    # 'untimed' if the calibration no longer calls it by that name)
    phases = {'statistics pass': report.seconds - sum(seconds.values())}
    phases.update({name: seconds.get(name) for name in CALIBRATION_PHASES})
    phases['total'] = report.seconds
    chosen = sorted(report.allocation.values()) if report.allocation else []
    del model
    release(device)
    return dict(
        search=label, search_rois=search_rois, num_images=report.num_images,
        phases={name: dict(seconds=s, float_forwards=None if s is None else s / float_seconds)
                for name, s in phases.items()},
        layers=len(layers), sensitivity_evaluations=sum(len(q.candidates)
                                                        for q in layers.values()),
        budget_gbops=report.budget_gbops, allocated_gbops=report.allocated_gbops,
        allocation=dict(report.allocation or {}),
        chosen_groups={g: chosen.count(g) for g in sorted(set(chosen))},
        untimed=[name for name in CALIBRATION_PHASES if name not in seconds])


def run_calibration(args: argparse.Namespace, device: torch.device, float_state: dict) -> dict:
    """Calibration + allocation with each requested search; whether they agree."""
    size = args.calib_image_size
    print_log(f'benchmark: calibration, float forward at {size}', logger='current')
    model = build_variant(FLOAT, float_state, args.score_thr, device)
    batches = calibration_batches(model, size, args.seed)
    float_seconds = time_predict(model, batches * args.images, device)['seconds_per_image']
    del model
    release(device)
    runs = [calibrate_once(args, device, float_state, search, float_seconds)
            for search in args.search]
    runs += [calibrate_once(args, device, float_state, 'fast', float_seconds, rois)
             for rois in args.search_rois]
    reference = runs[0]['allocation']
    for run in runs[1:]:
        run['layers_with_other_groups'] = sum(run['allocation'][n] != g
                                              for n, g in reference.items())
    exact = [run['allocation'] for run in runs
             if run['search'] in ('fast', 'naive') and run['search_rois'] is None]
    return dict(image_size=list(size), variant=CALIBRATION_VARIANT.quant,
                float_predict_seconds=float_seconds, runs=runs,
                same_allocation=all(a == exact[0] for a in exact) if exact else None)


# -- part 4: memory ----------------------------------------------------------------------

def _proc_status_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux), else ``None``."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace, device: torch.device) -> dict:
    """One variant's memory figures (runs in a fresh process): set-up, then evaluation."""
    variant = next(v for v in MEMORY_VARIANTS if v.name == args.memory_child)
    float_model = build_float(args.seed, args.score_thr)
    float_state = float_model.state_dict()
    del float_model
    model, _ = prepared_variant(variant, float_state, args, device, args.image_size)
    batches = make_batches(model, args.image_size, args.images, args.seed)
    del float_state
    release(device)
    if args.reuse_freed_memory:
        apply_reuse_freed_memory()
    # VmHWM, not ru_maxrss: Linux carries the parent's resident size at the fork over
    # exec into ru_maxrss (2 GB after the inference part ran in the parent)
    setup_peak = _proc_status_mib('VmHWM')
    if setup_peak is None:
        setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    before = _proc_status_mib('VmRSS')
    reset = _reset_peak_rss()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device) / MIB
    predict(model, batches[0])  # warm-up: the first call compiles the run-time kernels
    synchronize(device)
    warmup_peak = _proc_status_mib('VmHWM') if reset else None
    # steady state: the images after the warm-up, with the peak mark reset once more
    steady_reset = reset and _reset_peak_rss()
    for batch in batches:
        predict(model, batch)
    synchronize(device)
    steady_peak = _proc_status_mib('VmHWM') if steady_reset else None
    peak = None if warmup_peak is None or steady_peak is None else max(warmup_peak, steady_peak)
    if peak is None:  # no reset possible: the whole process's peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB
    return dict(variant=variant.name, quant=variant.quant, setup_peak_rss_mib=setup_peak,
                rss_before_eval_mib=before, eval_peak_rss_mib=peak, peak_reset=reset,
                warmup_peak_rss_mib=warmup_peak, steady_peak_rss_mib=steady_peak,
                eval_rss_increase_mib=None if before is None else peak - before,
                cuda_allocated_before_eval_mib=cuda_before if device.type == 'cuda' else None,
                cuda_max_allocated_mib=(torch.cuda.max_memory_allocated(device) / MIB
                                        if device.type == 'cuda' else None))


def child_command(args: argparse.Namespace, variant: Variant, out: str) -> list[str]:
    """The command line running one memory variant of this script in a fresh process."""
    size = '{}x{}'.format(*args.image_size)
    command = [sys.executable, osp.abspath(__file__), '--_memory-child', variant.name,
               '--device', args.device, '--seed', str(args.seed), '--image-size', size,
               '--images', str(args.images), '--score-thr', str(args.score_thr), '--out', out]
    if args.threads is not None:
        command += ['--threads', str(args.threads)]
    if args.reuse_freed_memory:
        command.append('--reuse-freed-memory')
    return command


def run_memory(args: argparse.Namespace) -> dict:
    """Peak memory of float vs igq-fixed (G=8) evaluation, each in a fresh process.

    The peak RSS of one process moves by a few hundred MiB from run to run (glibc's
    heap and mmap decisions), so each variant runs ``--memory-repeats`` times,
    interleaved, and the ratios are those of the medians.
    """
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.memory_repeats):
            for variant in MEMORY_VARIANTS:
                print_log(f'benchmark: memory, {variant.name} (child process, run '
                          f'{repeat + 1} of {args.memory_repeats})', logger='current')
                out = osp.join(tmp, 'child.json')
                result = subprocess.run(child_command(args, variant, out), capture_output=True,
                                        text=True)
                if result.returncode != 0:
                    raise RuntimeError(f'memory child for {variant.name} failed '
                                       f'(exit {result.returncode}):\n{result.stderr[-3000:]}')
                with open(out) as f:
                    rows.append(json.load(f))
    keys = ('eval_peak_rss_mib', 'steady_peak_rss_mib', 'eval_rss_increase_mib',
            'cuda_max_allocated_mib')
    medians = {variant.name: {key: _median([r[key] for r in rows if r['variant'] == variant.name])
                              for key in keys} for variant in MEMORY_VARIANTS}
    float_median, quant_median = (medians[v.name] for v in MEMORY_VARIANTS)
    ratios = {key: quant_median[key] / float_median[key] for key in keys
              if float_median[key] and quant_median[key] is not None}
    return dict(image_size=list(args.image_size), images=args.images + 1,
                repeats=args.memory_repeats, rows=rows, medians=medians,
                ratio_quantized_to_float=ratios)


def _median(values: Sequence[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return statistics.median(present) if present else None


# -- report ------------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value):
        if value is None:
            return '-'
        if isinstance(value, float):
            return f'{value:.4g}'
        return str(value)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def markdown(results: dict) -> str:
    """The short markdown report of every part that ran."""
    machine = results['machine']
    out = [f'# IGQ benchmark: Mask R-CNN Swin-T, W{BITS}/A{BITS}',
           f'{machine["device_name"]} ({machine["device"]}), {machine["cpu_count"]} CPUs, '
           f'{machine["torch_threads"]} torch threads, torch {machine["torch"]}; '
           f'seed {results["settings"]["seed"]}'
           + ('; freed host memory reused (--reuse-freed-memory)'
              if results['settings'].get('reuse_freed_memory') else '')]
    if 'inference' in results:
        part = results['inference']
        out += ['', f'## Inference ({"x".join(map(str, part["image_size"]))}, '
                f'{part["images"]} images after 1 warm-up)',
                _table(['variant', 's/image (mean)', 'x float (mean)', 'x float (median)',
                        f'backbone+neck s/image (median of {part.get("feature_repeats", 1)} '
                        f'x {part["images"]})', 'backbone+neck x float', 'detections/image',
                        'calib s'],
                       [(r['variant'], r['seconds_per_image'], r['ratio_to_float'],
                         r.get('median_ratio_to_float'), r.get('features_seconds_per_image'),
                         r.get('features_ratio_to_float'), r['detections_per_image'],
                         r['calib_seconds']) for r in part['rows']])]
    if 'quantizers' in results:
        part = results['quantizers']
        labels = [label + suffix for label in QUANTIZER_LABELS for suffix in ('', EAGER)]
        labels.append('torch per-tensor')
        out += ['', '## Activation quantizers alone (Melements/s; compiled, then eager)',
                _table(['shape', 'elements'] + labels + ['igq / per-tensor'],
                       [[f'{r["name"]} {tuple(r["shape"])}', r['elements']]
                        + [r[k]['elements_per_second'] / 1e6 for k in labels]
                        + [r['igq_over_per_tensor']] for r in part['rows']]),
                '', '### First call (compiles a new layout) and cached call, ms; graphs built',
                _table(['shape'] + [f'{label} {unit}' for label in QUANTIZER_LABELS
                                    for unit in ('first', 'cached')] + ['graphs'],
                       [[f'{r["name"]} {tuple(r["shape"])}']
                        + [r[label][key] * 1e3 for label in QUANTIZER_LABELS
                           for key in ('first_call_seconds', 'cached_call_seconds')]
                        + [sum(r[label]['graphs_compiled'] for label in QUANTIZER_LABELS)]
                        for r in part['rows']])]
        if all(READ in r for r in part['rows']):
            out += ['', '### Against memory bandwidth (Melements/s): read once, copy, and '
                    'the two-pass roofline of a quantizer that ranges its input',
                    _table(['shape', READ, COPY, 'two-pass roofline', 'igq G=8',
                            IGQ_RANGES, 'igq / roofline', 'per-tensor / copy',
                            'roofline / copy (best igq / per-tensor)'],
                           [[f'{r["name"]} {tuple(r["shape"])}']
                            + [r[k]['elements_per_second'] / 1e6 for k in (READ, COPY)]
                            + [r['two_pass_roofline_elements_per_second'] / 1e6,
                               r['igq G=8']['elements_per_second'] / 1e6,
                               r[IGQ_RANGES]['elements_per_second'] / 1e6,
                               r['igq_over_roofline'], r['per_tensor_over_copy'],
                               r['roofline_over_copy']] for r in part['rows']])]
    if 'calibration' in results:
        part = results['calibration']
        first = part['runs'][0]
        out += ['', f'## Calibration + allocation (igq, G_avg 8, 1 image '
                f'{"x".join(map(str, part["image_size"]))}; '
                f'{first["layers"]} layers, {first["sensitivity_evaluations"]} sensitivity '
                f'evaluations; float predict {part["float_predict_seconds"]:.3g} s)',
                _table(['phase'] + [f'{run["search"]} {unit}' for run in part['runs']
                                    for unit in ('seconds', 'float forwards')],
                       [[name] + [value for run in part['runs']
                                  for value in (run['phases'][name]['seconds'],
                                                run['phases'][name]['float_forwards'])]
                        for name in first['phases']])]
        exact = [run for run in part['runs'] if run['search'] in ('fast', 'naive')]
        if len(exact) > 1:
            out.append(f'same allocation from the exact searches (fast, naive): '
                       f'{part["same_allocation"]}')
        for run in part['runs'][1:]:
            out.append(f'{run["search"]}: {run["layers_with_other_groups"]} of '
                       f'{run["layers"]} layers get another G than with '
                       f'{part["runs"][0]["search"]}')
        untimed = sorted({name for run in part['runs'] for name in run['untimed']})
        if untimed:
            out.append(f'not called by these names, counted in the statistics pass: '
                       f'{", ".join(untimed)}')
    if 'memory' in results:
        part = results['memory']
        out += ['', '## Memory (evaluation in a fresh process per variant)',
                _table(['variant', 'set-up peak RSS MiB', 'RSS before eval MiB',
                        'eval peak RSS MiB', 'after warm-up peak RSS MiB',
                        'eval RSS increase MiB', 'CUDA max allocated MiB'],
                       [(r['variant'], r['setup_peak_rss_mib'], r['rss_before_eval_mib'],
                         r['eval_peak_rss_mib'], r.get('steady_peak_rss_mib'),
                         r['eval_rss_increase_mib'], r['cuda_max_allocated_mib'])
                        for r in part['rows']]
                       + [(f'median {name}', None, None, m['eval_peak_rss_mib'],
                           m.get('steady_peak_rss_mib'), m['eval_rss_increase_mib'],
                           m['cuda_max_allocated_mib'])
                          for name, m in part.get('medians', {}).items()]),
                'ratio of the medians, quantized / float: ' + ', '.join(
                    f'{k} {v:.3g}' for k, v in part['ratio_quantized_to_float'].items())]
    return '\n'.join(out) + '\n'


def write_results(results: dict, path: str) -> str:
    """Write the JSON and ``benchmark.md`` next to it; return the markdown."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(results, f, indent=2)
    text = markdown(results)
    with open(osp.join(osp.dirname(osp.abspath(path)), 'benchmark.md'), 'w') as f:
        f.write(text)
    return text


# -- main --------------------------------------------------------------------------------

def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Run the selected parts; return every figure."""
    results = dict(machine=machine_info(device), settings=dict(
        parts=list(args.parts), device=args.device, threads=args.threads, seed=args.seed,
        image_size=list(args.image_size), calib_image_size=list(args.calib_image_size),
        images=args.images, feature_repeats=args.feature_repeats, search=list(args.search),
        search_rois=list(args.search_rois),
        min_time=args.min_time, reuse_freed_memory=args.reuse_freed_memory,
        score_thr=args.score_thr, config=CONFIG,
        bits=BITS))
    float_state = None
    if {'inference', 'calibration'} & set(args.parts):
        float_state = build_float(args.seed, args.score_thr).state_dict()
    if 'inference' in args.parts:
        results['inference'] = run_inference(args, device, float_state)
    if 'quantizers' in args.parts:
        results['quantizers'] = run_quantizers(args, device)
    if 'calibration' in args.parts:
        results['calibration'] = run_calibration(args, device, float_state)
    if 'memory' in args.parts:
        results['memory'] = run_memory(args)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_child is not None:
        with open(args.out, 'w') as f:
            json.dump(memory_child(args, device), f)
        return 0
    results = run(args, device)
    print(write_results(results, args.out), end='', flush=True)  # the benchmark's output
    return 0


if __name__ == '__main__':
    sys.exit(main())

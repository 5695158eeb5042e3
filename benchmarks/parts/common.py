"""What every part shares: the model (mmdet's Mask R-CNN Swin-T), the images, timing.

Models are built from mmdet's config through MMEngine's registry with seeded random
weights (nothing is downloaded), quantized exactly as a config using the plugin does
(``IGQBackbone``, then :func:`igq_plugin.mm.quantize_mm_model` as
``IGQCalibrationHook`` does), and calibrated with
:func:`igq_plugin.mm.calibrate_mm_model` on one seeded synthetic image that looks like
a natural image (smoothed multi-scale noise). Every quantized variant is W4/A4.
"""
from __future__ import annotations

import copy
import functools
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The mm libraries are imported where a model is built: the quantizers part and the
# command line's argument checks run without them.
CONFIG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
BITS = 4
PAD_DIVISOR = 32  # the config's data_preprocessor pads images to multiples of 32
MIB = 2 ** 20


@dataclass(frozen=True)
class Variant:
    """One model of a comparison: ``quant`` is the backbone's ``quant=dict(...)``
    entry, ``None`` for the float model."""

    name: str
    quant: dict | None = None


def quantized(method: str, groups: int = 8) -> dict:
    """The ``quant`` config entry of a W4/A4 variant."""
    return dict(method=method, w_bits=BITS, a_bits=BITS, groups=groups)


FLOAT = Variant('float')
IGQ_FIXED_8 = Variant('igq-fixed G=8', quantized('igq-fixed', 8))


# -- machine and timing ------------------------------------------------------------------

def machine_info(device: torch.device) -> dict:
    """What the figures were measured on."""
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else platform.processor() or platform.machine())
    return dict(platform=platform.platform(), machine=platform.machine(),
                python=platform.python_version(), cpu_count=os.cpu_count(),
                torch=torch.__version__, torch_threads=torch.get_num_threads(),
                device=str(device), device_name=name,
                cuda=torch.version.cuda if device.type == 'cuda' else None)


def machine_line(machine: dict) -> str:
    """One line, e.g. ``2-core x86_64 CPU, 1 torch thread, no GPU``."""
    threads = machine['torch_threads']
    line = (f'{machine["cpu_count"]}-core {machine["machine"]} CPU, {threads} torch '
            f'thread{"s" if threads != 1 else ""}')
    if machine['device'].startswith('cuda'):
        return f'{line}, GPU {machine["device_name"]} (CUDA {machine["cuda"]})'
    return f'{line}, no GPU'


def log(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f'{time.strftime("%H:%M:%S")} benchmark: {message}', file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA) so wall-clock times cover the work."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """``(seconds, fn())``, the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def release(device: torch.device) -> None:
    """Free what deleted models held, before the next variant."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not ``None``; ``None`` when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# -- images ------------------------------------------------------------------------------

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


def make_batches(model: nn.Module, size: tuple[int, int], count: int, seed: int) -> list[dict]:
    """``count`` single-image batches of :func:`natural_image` images, preprocessed as
    the test pipeline would: ``dict(inputs, data_samples)``."""
    from mmdet.structures import DetDataSample
    height, width = size
    batches = []
    for index in range(count):
        sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size,
                                             scale_factor=(1.0, 1.0)))
        data = dict(inputs=[natural_image(height, width, seed=seed + index)],
                    data_samples=[sample])
        with torch.no_grad():
            batches.append(model.data_preprocessor(data, False))
    return batches


def calibration_batches(model: nn.Module, size: tuple[int, int], seed: int) -> list[dict]:
    """The one calibration image (seeded apart from the evaluated images)."""
    return make_batches(model, size, 1, seed=seed + 100_000)


# -- models ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _base_model_cfg():
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    import igq_plugin.mm  # noqa: F401  (registers IGQBackbone in MMEngine's root MODELS)
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


def float_state(seed: int, score_thr: float) -> dict:
    """The weights of the float detector, seeded random."""
    from mmengine.registry import MODELS
    _base_model_cfg()
    torch.manual_seed(seed)
    return MODELS.build(model_cfg(None, score_thr)).state_dict()


def build_variant(variant: Variant, weights: dict, score_thr: float,
                  device: torch.device) -> nn.Module:
    """Build ``variant`` with the float weights, on ``device``, in eval mode.

    Quantized variants are converted as ``IGQCalibrationHook`` does (backbone and neck;
    still uncalibrated).
    """
    from mmengine.registry import MODELS
    from igq_plugin.mm import quantize_mm_model
    model = MODELS.build(model_cfg(variant.quant, score_thr))
    if variant.quant is not None:
        quantize_mm_model(model)
    result = model.load_state_dict(weights, strict=False)
    stray = result.unexpected_keys + [k for k in result.missing_keys if 'quantizer' not in k]
    if stray:
        raise RuntimeError(f'{variant.name}: float weights do not fit: {stray[:5]}')
    model.to(device)
    model.eval()
    return model


def calibrate(model: nn.Module, batches: list[dict], **options):
    """Calibrate as the hook does (``options``: of
    :func:`igq_plugin.mm.calibrate_mm_model`) and check that every quantizer is active;
    returns the :class:`igq_plugin.CalibrationReport`."""
    from igq_plugin import check_quantized
    from igq_plugin.mm import calibrate_mm_model
    options.setdefault('progress', None)
    report = calibrate_mm_model(model, batches, **options)
    check_quantized(model)
    return report


def prepared_variant(variant: Variant, weights: dict, score_thr: float, seed: int,
                     device: torch.device, calib_size: tuple[int, int]):
    """Built and (for quantized variants) calibrated model, with its report or ``None``."""
    model = build_variant(variant, weights, score_thr, device)
    if variant.quant is None:
        return model, None
    return model, calibrate(model, calibration_batches(model, calib_size, seed))


def predict(model: nn.Module, batch: dict) -> list:
    """One ``predict`` forward (inference mode, no autograd)."""
    with torch.no_grad():
        return model(batch['inputs'], batch['data_samples'], mode='predict')


def extract_features(model: nn.Module, batch: dict):
    """Backbone and neck alone (what the default protocol quantizes): the FPN outputs."""
    with torch.no_grad():
        return model.extract_feat(batch['inputs'])


# -- markdown ----------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats with 4 significant digits, ``None`` as ``-``."""
    def cell(value):
        if value is None:
            return '-'
        if isinstance(value, float):
            return f'{value:.4g}'
        return str(value)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def size_text(size: Sequence[int]) -> str:
    """``800x1216``."""
    return 'x'.join(map(str, size))

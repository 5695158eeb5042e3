"""Run MMDetection / MMSegmentation tests in-process with MMEngine's Runner (demos, tools).

Built on the public API: MMEngine's ``Config`` and ``Runner``, and
:mod:`igq_plugin.mm` (``IGQCalibrationHook`` in the config for :func:`run_test`;
:func:`prepared_runner` converts and loads the float weights without it, for tools that
calibrate themselves).
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader, Runner

from igq_plugin import CalibrationReport, QuantState, float_run
from igq_plugin.mm import (IGQCalibrationHook, calibrate_mm_model, quantize_mm_model,
                           take_calibration_batches)
from igq_plugin.mm import fit_float_checkpoint
from igq_plugin.nn import activation_quantizers, igq_quantizers, set_quant_state
from igq_plugin.quant import QuantMode, quant_mode

from .fidelity import Fidelity, output_fidelity


@dataclass
class EvaluationResult:
    """Metrics and timings of one test run (``fidelity``: see :mod:`.fidelity`)."""

    metrics: dict[str, float]
    report: CalibrationReport | None
    calib_seconds: float
    eval_seconds: float
    fidelity: Fidelity | None = None


def load_config(path: str, options: dict[str, Any] | None = None, **overrides: Any) -> Config:
    """``Config.fromfile`` plus ``--cfg-options``-style dotted overrides.

    The config's text (logged and dumped to the work dir by every Runner) is not
    formatted with yapf: formatting a detector's config takes seconds of pure Python
    per Runner, more than building the model, and in-process runs build many.
    """
    loaded = Config.fromfile(path)  # (its format_python_code only reaches lazy-import configs)
    cfg = Config(loaded.to_dict(), cfg_text=loaded.text, filename=loaded.filename,
                 format_python_code=False)
    if options:
        cfg.merge_from_dict(options)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def run_test(cfg: Config, checkpoint: str, work_dir: str,
             fidelity_images: tuple[int, int] | None = None) -> EvaluationResult:
    """``tools/test.py`` in-process: build the runner, load weights, test.

    Args:
        fidelity_images: ``(start, count)``: after a quantized test, measure
            :func:`~.fidelity.output_fidelity` on these images of the test split.

    Returns:
        Metrics, the calibration report (when the IGQ hook ran), timings (the
        evaluation time excludes calibration and fidelity) and the fidelity.
    """
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.launcher = 'none'
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    metrics = runner.test()
    total = time.perf_counter() - start
    hook = next((h for h in runner.hooks if isinstance(h, IGQCalibrationHook)), None)
    report = hook.report if hook is not None else None
    calib = report.seconds if report is not None else 0.0
    fidelity = None
    if fidelity_images is not None and hook is not None:
        start, count = fidelity_images
        model = runner.model
        batches = take_calibration_batches(runner.test_dataloader, count, model, start)
        fidelity = output_fidelity(model, batches)
    return EvaluationResult(dict(metrics), report, calib, total - calib, fidelity)


def prepared_runner(cfg: Config, checkpoint: str, work_dir: str) -> Runner:
    """A runner with the model converted (:func:`igq_plugin.mm.quantize_mm_model`) and
    the float weights loaded, not yet calibrated; the model is in eval mode. The
    config's custom hooks (``IGQCalibrationHook``) are dropped: the caller calibrates."""
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.load_from = None
    cfg.custom_hooks = []
    runner = Runner.from_cfg(cfg)
    quantize_mm_model(runner.model)
    state = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    print_log(fit_float_checkpoint(runner.model, state), logger='current')
    runner.model.load_state_dict(state.get('state_dict', state), strict=True)
    runner.model.eval()
    return runner


def channel_range_statistics(cfg: Config, checkpoint: str, work_dir: str,
                             num_images: int = 8) -> dict[str, dict[str, float]]:
    """The two channel-range phenomena of every channel-kind IGQ layer.

    With the range ``M - m`` of every channel on each of ``num_images`` images:

    - ``variation``: per channel the coefficient of variation (std/mean) of its range
      across images, averaged over channels. What a static channel grouping cannot
      follow and IGQ's per-image assignment can.
    - ``spread``: on each image the largest channel range over the median one, median
      over images. What one range per layer (``per-tensor``) pays for: at ``b`` bits a
      median channel gets about ``b - log2(spread)`` bits of resolution.

    Args:
        cfg: a config whose backbone is ``IGQBackbone`` with ``method='igq'``.
        checkpoint: float weights.
        work_dir: runner work dir.
        num_images: images from the test dataloader (at most its size).

    Returns:
        ``{'variation': {layer: value}, 'spread': {layer: value}}``.
    """
    runner = prepared_runner(cfg, checkpoint, work_dir)
    model = runner.model
    dataloader = runner.test_dataloader
    batches = take_calibration_batches(dataloader, min(num_images, len(dataloader.dataset)),
                                       model)
    set_quant_state(model, QuantState.CALIBRATING)
    with torch.no_grad(), quant_mode(model, QuantMode.CALIBRATE):
        for batch in batches:
            model(batch['inputs'], batch['data_samples'], mode='predict')
    stats: dict[str, dict[str, float]] = {'variation': {}, 'spread': {}}
    for name, quantizer in igq_quantizers(model).items():
        if quantizer.kind != 'channel':
            continue
        lower, upper = quantizer.pooled_ranges()
        ranges = (upper - lower).view(len(batches), -1)  # [images, C]
        stats['variation'][name] = float(
            (ranges.std(0) / ranges.mean(0).clamp(min=1e-8)).mean())
        stats['spread'][name] = float(
            (ranges.amax(1) / ranges.median(1).values.clamp(min=1e-8)).median())
    return stats


def allocation_of(report: CalibrationReport | None) -> dict[str, int]:
    """The chosen group counts of an ``igq`` run (empty for other methods)."""
    return dict(report.allocation) if report is not None and report.allocation else {}


def _layer_kind(name: str) -> str:
    """Layer kind of a quantizer name, e.g.
    ``backbone.stages.0.blocks.1.attn.w_msa.qkv.input_quantizer`` -> ``attn.w_msa.qkv.input``.
    """
    name = name.replace('ffn.layers.0.0.', 'ffn.fc1.').replace('ffn.layers.1.', 'ffn.fc2.')
    kind = re.sub(r'\.\d+', '', name).replace('_quantizer', '')
    for prefix in ('backbone.stages.blocks.', 'backbone.stages.', 'backbone.'):
        kind = kind.replace(prefix, '')
    return 'neck' if kind.startswith('neck.') else kind


def quantization_errors(cfg: Config, checkpoint: str, work_dir: str, calib_images: int = 1,
                        eval_images: int = 8, calib_start: int = 0) -> dict[str, Any]:
    """Where a quantizer loses information on images it was not calibrated on.

    Calibrates on ``calib_images`` images of the config's test dataloader from image
    ``calib_start`` on, and measures on the next ``eval_images``: for every activation
    quantizer the relative error ``||q(x) - x||^2 / ||x||^2`` of its own input (in the
    quantized model), averaged per layer kind, the relative error of the neck outputs
    against the float model and the mean KL of the class distributions
    (:func:`~.fidelity.output_fidelity`). Point the test dataloader at a split
    that is not evaluated (e.g. train) to compare quantizer designs without touching val.

    Returns:
        ``dict(neck=float, kl=float, kinds={kind: float}, layers={name: float})``.
    """
    runner = prepared_runner(cfg, checkpoint, work_dir)
    model = runner.model
    batches = take_calibration_batches(runner.test_dataloader, calib_images + eval_images, model,
                                       calib_start)
    calibrate_mm_model(model, batches[:calib_images], progress=None)
    quantizers = activation_quantizers(model)
    sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in quantizers}

    def record(name, module, args, output):
        x = args[0]
        sums[name][0] += float((output - x).pow(2).sum())
        sums[name][1] += float(x.pow(2).sum())

    neck = [0.0, 0.0]
    with torch.no_grad():
        for batch in batches[calib_images:]:
            with float_run(model):
                reference = model.extract_feat(batch['inputs'])
            handles = [q.register_forward_hook(functools.partial(record, name))
                       for name, q in quantizers.items()]
            try:
                output = model.extract_feat(batch['inputs'])
            finally:
                for handle in handles:
                    handle.remove()
            for ref, out in zip(reference, output):
                neck[0] += float((out - ref).pow(2).sum())
                neck[1] += float(ref.pow(2).sum())
    layers = {name: err / max(power, 1e-30) for name, (err, power) in sums.items() if power}
    kinds: dict[str, list[float]] = {}
    for name, value in layers.items():
        kinds.setdefault(_layer_kind(name), []).append(value)
    fidelity = output_fidelity(model, batches[calib_images:])
    return dict(neck=neck[0] / max(neck[1], 1e-30), kl=fidelity.kl,
                kinds={kind: sum(v) / len(v) for kind, v in sorted(kinds.items())},
                layers=layers)

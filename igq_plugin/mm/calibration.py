"""Calibration of an mm detector or segmentor: data, forward and predictor for the core.

The orchestration is :func:`igq_plugin.calibrate_model`; this module supplies what is
mm-specific: preprocessed calibration batches, the ``mode='predict'`` forward and the
per-RoI / per-pixel predictor of the sensitivity search.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from mmengine.logging import print_log
from mmengine.utils import ProgressBar
from torch import nn

from ..calibration import CalibrationReport, calibrate_model, eval_mode
from ..nn import float_run, require_record
from ..report import format_table
from ..search import DEFAULT_SENSITIVITY, check_sensitivity
from .predictors import build_predictor, check_search_rois


def take_calibration_batches(dataloader, num_images: int, model: nn.Module,
                             start: int = 0) -> list[dict]:
    """Samples ``start .. start + num_images - 1`` of the dataloader's dataset (the first
    ``num_images`` by default), preprocessed, one image per batch. Independent of the
    sampler, so every world size calibrates on the same images.

    Raises:
        ValueError: ``num_images`` < 1 or more images than the dataset has from ``start``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f'num_images={num_images!r}: calibration needs at least 1 image')
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f'start={start!r}: the index of the first image must be an integer '
                         f'>= 0')
    dataset = dataloader.dataset
    if len(dataset) < start + num_images:
        raise ValueError(f'num_images={num_images} from image {start} but the dataset has '
                         f'only {len(dataset)} images')
    with torch.no_grad():
        return [model.data_preprocessor(dataloader.collate_fn([dataset[i]]), False)
                for i in range(start, start + num_images)]


def predict_forward(model: nn.Module, batch: dict):
    """The runner's test forward of one preprocessed batch."""
    return model(batch['inputs'], batch['data_samples'], mode='predict')


def calibrate_mm_model(model: nn.Module, batches: Sequence[dict],
                       progress: Callable[[int], object] | None = ProgressBar,
                       reuse_prefix: bool = True, search_rois: int | None = None,
                       sensitivity: str = DEFAULT_SENSITIVITY,
                       fisher_samples: int | None = None) -> CalibrationReport:
    """Calibrate a converted mm model and, for ``method='igq'``, allocate groups.

    Args:
        model: detector or segmentor converted by :func:`~.convert.quantize_mm_model`.
        batches: preprocessed calibration batches (see :func:`take_calibration_batches`).
        progress: progress-bar factory taking the task count (``None`` to disable).
        reuse_prefix: the sensitivity search recomputes only what each layer can
            change (same result); ``False`` runs the naive full forwards.
        search_rois: RoIs per image of the sensitivity search: the float model's
            best-scored proposals; ``None`` (default) takes all of them, the
            definition in docs/method.md, section 5. See
            :class:`~.predictors.RoIClassPredictor`.
        sensitivity: ``'fisher'`` (default), ``'exact'`` or ``'fisher-full'``, the
            estimator of the sensitivity tables; ``fisher_samples``: its label draws per item
            (``None``: the estimator's default; see :func:`igq_plugin.calibrate_model`).

    Returns:
        A :class:`~igq_plugin.CalibrationReport`; the model is left in quantized mode.
    """
    config = require_record(model).config
    check_search_rois(search_rois)
    check_sensitivity(sensitivity, fisher_samples)
    if not batches:
        raise ValueError('empty calibration set: need at least 1 calibration image')
    predictor, start = None, time.perf_counter()
    with eval_mode(model):
        if config.allocates:
            with float_run(model):
                predictor = build_predictor(model, batches, reuse_prefix, search_rois)
        report = calibrate_model(model, batches, predict_forward, predictor=predictor,
                                 progress=progress, sensitivity=sensitivity,
                                 fisher_samples=fisher_samples)
    report.seconds = time.perf_counter() - start  # the predictor's set-up included
    return report


def log_report(report: CalibrationReport, logger: str = 'current') -> None:
    """Log the per-layer table and the totals through MMEngine's logger."""
    print_log('IGQ quantized layers:\n' + format_table(
        report.rows, ['layer', 'method', 'a_bits', 'items', 'groups', 'sensitivity', 'bops']),
        logger=logger)
    budget = (f'; allocated layers {report.allocated_gbops:.4f} of a budget of '
              f'{report.budget_gbops:.4f} GBOPs' if report.budget_gbops else '')
    search = f' ({report.sensitivity} sensitivity)' if report.sensitivity else ''
    print_log(f'IGQ calibration: method={report.method}{search}, {report.num_images} '
              f'image(s), {report.seconds:.1f} s, {report.gbops:.4f} GBOPs{budget}',
              logger=logger)
    if report.unmeasured:
        print_log(f'IGQ allocation: the class distributions the search compares do not '
                  f'depend on the G of {len(report.unmeasured)} layers (e.g. '
                  f'{report.unmeasured[0]}); they keep G_avg', logger=logger)

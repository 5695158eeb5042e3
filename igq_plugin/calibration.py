"""Calibration of a converted model: statistics, sensitivity search, allocation.

The one orchestration every caller uses (the mm hook, the demo, the benchmark, the
timm classification tool): the caller supplies the data (``batches``), how to run
the model on one batch (``forward``) and, for ``method='igq'``, the model's class
distributions for the sensitivity search (a
:class:`~igq_plugin.search.SensitivityPredictor`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .nn import (QuantState, activation_quantizers, finalize_calibration, float_run,
                 igq_quantizers, require_record, restore_folds, set_quant_state)
from .quant import QuantMode, quant_mode, set_mode
from .report import layer_rows
from .search import (DEFAULT_SENSITIVITY, FISHER_ESTIMATORS, FisherPredictor,
                     SensitivityPredictor, allocate_groups, check_sensitivity, fisher_tables,
                     sensitivity_tables, total_bops)

Forward = Callable[[nn.Module, Any], Any]


@dataclass
class CalibrationReport:
    """What calibration did, for logs and result files."""

    method: str
    num_images: int
    seconds: float
    gbops: float
    rows: list[dict] = field(default_factory=list)
    allocation: dict[str, int] | None = None
    unmeasured: tuple[str, ...] = ()  # igq: layers whose G the predictions ignore
    budget_gbops: float | None = None  # of the allocated (IGQ) layers
    allocated_gbops: float | None = None  # the same layers with the chosen G
    macs: int = 0  # multiply-accumulates of the quantized operations (last image)
    sensitivity: str | None = None  # igq: the estimator of the sensitivity tables


class ClassifierPredictor:
    """Class probabilities of an image classifier (docs/method.md, section 5).

    Args:
        model: the converted classifier.
        batches: calibration batches.
        forward: ``forward(model, batch)`` -> logits ``[B, K]``.
    """

    def __init__(self, model: nn.Module, batches: Sequence[Any], forward: Forward):
        self.model, self.batches, self.forward = model, batches, forward

    def predict(self, layer: str | None) -> list[torch.Tensor]:
        """One ``[B, K]`` probability tensor per batch (``layer`` needs no special case:
        a classifier's forward is cheap next to a detector's)."""
        with torch.no_grad():
            return [F.softmax(self.forward(self.model, batch).float(), dim=-1)
                    for batch in self.batches]

    def log_probs(self) -> Iterator[torch.Tensor]:
        """One differentiable ``[B, K]`` log-probability tensor per batch, lazily (for
        ``sensitivity='fisher'`` / ``'fisher-full'``,
        :class:`~igq_plugin.search.FisherPredictor`)."""
        for batch in self.batches:
            yield F.log_softmax(self.forward(self.model, batch).float(), dim=-1)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``model`` in eval mode; restore its training flag afterwards.

    Calibration measures the inference-time model: a runner hands the model over in
    training mode (its test loop calls ``eval()`` only after the ``before_test`` hooks),
    where dropout, stochastic depth and batch norm would change every statistic and
    every prediction of the search.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def calibrate_model(model: nn.Module, batches: Sequence[Any], forward: Forward, *,
                    predictor: SensitivityPredictor | None = None,
                    progress: Callable[[int], Any] | None = None,
                    sensitivity: str = DEFAULT_SENSITIVITY,
                    fisher_samples: int | None = None) -> CalibrationReport:
    """Calibrate every quantizer of a converted model; for ``method='igq'`` also run the
    sensitivity search and the group-size allocation under the BOP budget.

    Args:
        model: converted by :func:`igq_plugin.quantize_model`.
        batches: calibration batches (the paper's protocol: 1 image for detection, 32
            for classification).
        forward: ``forward(model, batch)`` runs the model on one batch.
        predictor: the model's class distributions for the search; required for
            ``method='igq'`` (e.g. :class:`ClassifierPredictor`), unused otherwise.
        progress: factory ``progress(steps)`` of an object with ``update()`` (e.g.
            mmengine's ``ProgressBar``), for the search; ``None``: silent.
        sensitivity: estimator of the sensitivity tables for ``method='igq'``:
            ``'fisher'`` (default: the diagonal-Fisher second-order estimate from one
            forward and ``fisher_samples`` backward passes per image,
            :func:`~igq_plugin.search.fisher_tables`), ``'exact'`` (one partial
            forward per layer and candidate G, the method's definition,
            :func:`~igq_plugin.search.sensitivity_tables`) or ``'fisher-full'`` (the same
            passes, scored with the sampled full Fisher, couplings kept); the Fisher
            estimators need a :class:`~igq_plugin.search.FisherPredictor`.
        fisher_samples: labels drawn per item for ``'fisher'`` and ``'fisher-full'``
            (backward passes); ``None``: the estimator's default
            (:data:`~igq_plugin.search.DEFAULT_FISHER_SAMPLES` = 4 for ``'fisher'``,
            :data:`~igq_plugin.search.DEFAULT_FISHER_FULL_SAMPLES` = 16 for
            ``'fisher-full'``).

    Returns:
        A :class:`CalibrationReport`; the model is left ``READY``, in quantized mode.

    Raises:
        TypeError: the model was not converted, ``predictor`` has no ``predict``, or
            no ``log_probs`` for ``sensitivity='fisher'`` / ``'fisher-full'``.
        ValueError: no batches, ``method='igq'`` without a predictor, or a bad
            ``sensitivity`` / ``fisher_samples`` (all before any forward), or
            non-finite activations during calibration.
    """
    record = require_record(model)
    config = record.config
    sensitivity, fisher_samples = check_sensitivity(sensitivity, fisher_samples)
    if not batches:
        raise ValueError('empty calibration set: need at least 1 calibration batch')
    if config.allocates and predictor is None:
        raise ValueError(f"method={config.method!r} allocates group sizes from a sensitivity "
                         "search and needs predictor= (e.g. igq_plugin.ClassifierPredictor); use "
                         "method='igq-fixed' for one G in every layer")
    if predictor is not None and not isinstance(predictor, SensitivityPredictor):
        raise TypeError(f'predictor must have predict(layer) -> list of probabilities; got '
                        f'{type(predictor).__name__}')
    if config.allocates and sensitivity in FISHER_ESTIMATORS and \
            not isinstance(predictor, FisherPredictor):
        raise TypeError(f"sensitivity={sensitivity!r} needs a predictor with log_probs() "
                        f'(differentiable log-probabilities, igq_plugin.FisherPredictor); '
                        f'{type(predictor).__name__} has none: use sensitivity=\'exact\'')
    start = time.perf_counter()
    with eval_mode(model):
        report = _calibrate(model, config, batches, forward, predictor, progress,
                            sensitivity, fisher_samples)
    report.seconds = time.perf_counter() - start
    return report


def _calibrate(model, config, batches, forward, predictor, progress, sensitivity,
               fisher_samples) -> CalibrationReport:
    set_quant_state(model, QuantState.CALIBRATING)
    restore_folds(model)  # a new calibration observes the float weights
    passes = [QuantMode.CALIBRATE]
    if config.calibration_order == 'quantized':  # again, on quantized upstream activations
        passes.append(QuantMode.RECALIBRATE)
    for mode in passes:
        with torch.no_grad(), quant_mode(model, mode):
            for batch in batches:
                forward(model, batch)
        finalize_calibration(model)
    quantizers = activation_quantizers(model)
    report = CalibrationReport(config.method, len(batches), 0.0, 0.0)
    tables = None
    if config.allocates:
        layers = igq_quantizers(model)
        report.sensitivity = sensitivity
        if sensitivity in FISHER_ESTIMATORS:  # one step per calibration image
            steps = len(batches)
        else:  # one step per (layer, candidate)
            steps = sum(len(q.candidates) for q in layers.values())
        bar = progress(steps) if progress is not None else None
        on_step = bar.update if bar is not None else None
        if sensitivity in FISHER_ESTIMATORS:
            tables = fisher_tables(model, layers, predictor, fisher_samples, on_step=on_step,
                                   full=sensitivity == 'fisher-full')
        else:
            tables = sensitivity_tables(model, layers, predictor, on_step=on_step)
        if bar is not None and hasattr(bar, 'file'):
            bar.file.write('\n')  # the bar's last update ends without a newline
            bar.file.flush()
        result = allocate_groups(layers, tables, g_avg=config.groups)
        report.allocation = result.groups
        report.unmeasured = result.unmeasured
        report.budget_gbops = result.budget / 1e9
        report.allocated_gbops = result.total_bops / 1e9
    set_mode(model, QuantMode.QUANTIZED)
    set_quant_state(model, QuantState.READY)
    report.gbops = total_bops(quantizers) / 1e9
    report.rows = layer_rows(quantizers, tables)
    report.macs = sum(q.op_cost.macs for q in quantizers.values() if q.op_cost is not None)
    return report


def check_quantized(model: nn.Module) -> int:
    """Raise unless every quantizer of ``model`` is calibrated and in quantized mode.

    Returns:
        The number of active activation quantizers.
    """
    quantizers = activation_quantizers(model)
    inactive = [n for n, q in quantizers.items()
                if q.mode is not QuantMode.QUANTIZED or not bool(q.calibrated)]
    if not quantizers or inactive:
        raise RuntimeError(f'quantized evaluation requested but {len(inactive)} of '
                           f'{len(quantizers)} quantizers are inactive (e.g. {inactive[:3]})')
    return len(quantizers)


__all__ = ['CalibrationReport', 'ClassifierPredictor', 'calibrate_model', 'check_quantized',
           'float_run']

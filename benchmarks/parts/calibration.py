"""Calibration part: seconds of calibration + group-size allocation, by phase.

``method='igq'``, G_avg 8, one calibration image at ``--calib-image-size``, through
:func:`igq_plugin.mm.calibrate_mm_model` (what ``IGQCalibrationHook`` runs), once per
sensitivity search of ``--search``:

- ``exact``: ``sensitivity='exact'``, one partial forward per (layer, candidate G),
  the float activations upstream of each layer reused;
- ``naive``: the same tables from one full forward per (layer, G) (``reuse_prefix=False``;
  hours at 800x1216 on a CPU);
- ``fisher`` (the library's default), ``fisher-full``: ``sensitivity='fisher'`` /
  ``'fisher-full'``.

The phases come from what the public call exposes: wall time around it, its report's
``seconds``, and its ``progress=`` argument, a factory that calibration calls when the
search starts and whose ``update()`` it calls after every search step; so the search is
timed from the first call to the last update, and what follows (allocation, the
report) until the call returns. The predictor's set-up (the float proposals and, for
``exact``, the cached float activations) is timed by a call of its own on the
calibrated model; the statistics pass (with ``finalize``) is what is left before the
search. Each phase is also given in float ``predict`` forwards of the same image.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from igq_plugin.mm import build_predictor
from igq_plugin.nn import float_run, igq_quantizers

from .common import (FLOAT, Variant, build_variant, calibrate, calibration_batches,
                     float_state, log, predict, quantized, release, size_text, synchronize,
                     table, timed)

TITLE = 'Calibration + allocation'
VARIANT = Variant('igq G_avg=8', quantized('igq', 8))
SEARCHES = {'exact': dict(sensitivity='exact', reuse_prefix=True),
            'naive': dict(sensitivity='exact', reuse_prefix=False),
            'fisher': dict(sensitivity='fisher', reuse_prefix=True),
            'fisher-full': dict(sensitivity='fisher-full', reuse_prefix=True)}
EXACT = ('exact', 'naive')  # the searches that must agree
PREDICTOR, STATISTICS, SEARCH, ALLOCATION, TOTAL = (
    'predictor set-up (own call)', 'statistics pass + finalize (rest before the search)',
    'sensitivity search', 'allocation + report', 'total (report.seconds)')


class SearchClock:
    """A ``progress=`` factory for calibration that notes when the search starts
    (the factory's call) and when each of its steps ends (``update()``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.started: float | None = None
        self.steps: int | None = None
        self.stamps: list[float] = []

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def __call__(self, steps: int) -> 'SearchClock':
        self.started, self.steps = self.now(), steps
        return self

    def update(self) -> None:
        self.stamps.append(self.now())


def calibrate_once(args: argparse.Namespace, device: torch.device, weights: dict,
                   search: str, float_seconds: float, search_rois: int | None = None) -> dict:
    """One calibration + allocation of the igq variant with ``search`` (on the
    ``search_rois`` best float proposals, or all); seconds by phase."""
    label = search if search_rois is None else f'{search} top-{search_rois} RoIs'
    log(f'calibration, {VARIANT.name}, {label} search')
    model = build_variant(VARIANT, weights, args.score_thr, device)
    batches = calibration_batches(model, args.calib_image_size, args.seed)
    options = dict(SEARCHES[search], search_rois=search_rois)
    clock = SearchClock(device)
    start = clock.now()
    report = calibrate(model, batches, progress=clock, **options)
    end = clock.now()
    if clock.started is None or len(clock.stamps) != clock.steps:
        raise RuntimeError(f'{label}: calibration reported {len(clock.stamps)} of '
                           f'{clock.steps} search steps; the phases cannot be told apart')
    with float_run(model):
        predictor_seconds, _ = timed(functools.partial(
            build_predictor, model, batches, options['reuse_prefix'], search_rois), device)
    phases = {PREDICTOR: predictor_seconds,
              STATISTICS: clock.started - start - predictor_seconds,
              SEARCH: clock.stamps[-1] - clock.started,
              ALLOCATION: end - clock.stamps[-1], TOTAL: report.seconds}
    layers = igq_quantizers(model)
    chosen = sorted(report.allocation.values())
    del model
    release(device)
    return dict(search=label, search_rois=search_rois, sensitivity=report.sensitivity,
                reuse_prefix=options['reuse_prefix'], num_images=report.num_images,
                wall_seconds=end - start, search_steps=clock.steps,
                phases={name: dict(seconds=s, float_forwards=s / float_seconds)
                        for name, s in phases.items()},
                layers=len(layers), candidates=sum(len(q.candidates) for q in layers.values()),
                budget_gbops=report.budget_gbops, allocated_gbops=report.allocated_gbops,
                allocation=dict(report.allocation),
                chosen_groups={g: chosen.count(g) for g in sorted(set(chosen))})


def float_predict_seconds(args: argparse.Namespace, device: torch.device,
                          weights: dict) -> float:
    """Median seconds of the float detector's ``predict`` on the calibration image
    (``--images`` times, after a warm-up)."""
    log(f'calibration, float forward at {size_text(args.calib_image_size)}')
    model = build_variant(FLOAT, weights, args.score_thr, device)
    batch = calibration_batches(model, args.calib_image_size, args.seed)[0]
    predict(model, batch)
    seconds = [timed(functools.partial(predict, model, batch), device)[0]
               for _ in range(args.images)]
    del model
    release(device)
    return statistics.median(seconds)


def compare_allocations(runs: list[dict]) -> bool | None:
    """Per run after the first: how many layers get another G than with the first.
    Returns whether the exact searches on all RoIs agree (``None``: fewer than two)."""
    reference = runs[0]['allocation']
    for run in runs[1:]:
        run['layers_with_other_groups'] = sum(run['allocation'][n] != g
                                              for n, g in reference.items())
    exact = [run['allocation'] for run in runs
             if run['search'] in EXACT and run['search_rois'] is None]
    return all(a == exact[0] for a in exact) if len(exact) > 1 else None


def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Calibration + allocation with each requested search; whether they agree."""
    weights = float_state(args.seed, args.score_thr)
    float_seconds = float_predict_seconds(args, device, weights)
    runs = [calibrate_once(args, device, weights, search, float_seconds)
            for search in args.search]
    runs += [calibrate_once(args, device, weights, 'exact', float_seconds, rois)
             for rois in args.search_rois]
    same = compare_allocations(runs)
    return dict(image_size=list(args.calib_image_size), variant=VARIANT.quant,
                float_predict_seconds=float_seconds, float_predict_repeats=args.images,
                runs=runs, same_allocation=same)


def markdown(part: dict) -> str:
    """The part's table: one row per phase, seconds and float forwards per search."""
    runs, first = part['runs'], part['runs'][0]
    lines = [f'## {TITLE} (igq, G_avg 8, 1 image {size_text(part["image_size"])}; '
             f'{first["layers"]} IGQ layers, {first["candidates"]} (layer, G) candidates; '
             f'float predict {part["float_predict_seconds"]:.3g} s)', '',
             table(['phase'] + [f'{run["search"]} {unit}' for run in runs
                                for unit in ('s', 'float forwards')],
                   [[name] + [value for run in runs
                              for value in (run['phases'][name]['seconds'],
                                            run['phases'][name]['float_forwards'])]
                    for name in first['phases']]), '']
    if part['same_allocation'] is not None:
        lines.append(f'Same allocation from the exact searches (exact, naive): '
                     f'{part["same_allocation"]}.')
    lines += [f'{run["search"]}: {run["layers_with_other_groups"]} of {run["layers"]} layers '
              f'get another G than with {first["search"]}.' for run in runs[1:]]
    return '\n'.join(lines)

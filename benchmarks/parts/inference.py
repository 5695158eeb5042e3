"""Inference part: seconds per image of float vs each W4/A4 activation quantizer.

Every variant is built and calibrated on one image first (its calibration seconds are
:attr:`igq_plugin.CalibrationReport.seconds`) and warmed up with one forward. Then:

- the whole detector (``model(..., mode='predict')``), the images timed round-robin
  across the variants, so that a change of load on the machine reaches every variant
  alike; mean and median over the images, and the ratio to float;
- the backbone and neck alone (``model.extract_feat``: what the default protocol
  quantizes), in a round-robin of its own, ``--feature-repeats`` times per image; the
  median is free of the heads' data-dependent cost (RoIAlign's work grows with the
  proposals' sizes, which quantization changes).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from .common import (FLOAT, IGQ_FIXED_8, Variant, extract_features, float_state, log,
                     make_batches, predict, prepared_variant, quantized, release, size_text,
                     table, timed)

TITLE = 'Inference'
VARIANTS = (
    FLOAT,
    Variant('per-tensor', quantized('per-tensor')),
    Variant('static-group G=8', quantized('static-group', 8)),
    # the run-time path of 'igq' (the allocation only changes each layer's G)
    IGQ_FIXED_8,
    Variant('igq-fixed G=16', quantized('igq-fixed', 16)),
    Variant('upper-bound', quantized('upper-bound')),
)


def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds per image of every variant and their ratios to float."""
    weights = float_state(args.seed, args.score_thr)
    prepared = []
    for variant in VARIANTS:
        log(f'inference, preparing {variant.name}')
        model, report = prepared_variant(variant, weights, args.score_thr, args.seed, device,
                                         args.image_size)
        batches = make_batches(model, args.image_size, args.images, args.seed)
        predict(model, batches[0])  # warm-up
        prepared.append(dict(variant=variant, model=model, report=report, batches=batches,
                             seconds=[], features_seconds=[], detections=[]))
    del weights
    for index in range(args.images):
        log(f'inference, image {index + 1} of {args.images}, every variant')
        for entry in prepared:
            seconds, results = timed(lambda: predict(entry['model'], entry['batches'][index]),
                                     device)
            entry['seconds'].append(seconds)
            entry['detections'].append(len(results[0].pred_instances))
    for index in range(args.images):
        log(f'inference, backbone+neck, image {index + 1} of {args.images}, '
            f'{args.feature_repeats} x every variant')
        for _ in range(args.feature_repeats):
            for entry in prepared:
                seconds, _ = timed(lambda: extract_features(entry['model'],
                                                            entry['batches'][index]), device)
                entry['features_seconds'].append(seconds)
    rows = [row_of(entry) for entry in prepared]
    del prepared
    release(device)
    add_ratios(rows)
    return dict(image_size=list(args.image_size), images=args.images, warmup=1,
                schedule='round-robin', feature_repeats=args.feature_repeats, rows=rows)


def row_of(entry: dict) -> dict:
    """One variant's figures: whole detector mean and median, backbone+neck median."""
    variant, report = entry['variant'], entry['report']
    return dict(variant=variant.name, quant=variant.quant, seconds=entry['seconds'],
                seconds_per_image=statistics.mean(entry['seconds']),
                median_seconds_per_image=statistics.median(entry['seconds']),
                features_seconds=entry['features_seconds'],
                features_seconds_per_image=statistics.median(entry['features_seconds']),
                detections_per_image=statistics.mean(entry['detections']),
                calib_seconds=report.seconds if report else None,
                gbops=report.gbops if report else None)


def add_ratios(rows: list[dict]) -> None:
    """Each row's figures over the float row's (the first)."""
    reference = rows[0]
    for row in rows:
        for key, ratio in (('seconds_per_image', 'ratio_to_float'),
                           ('median_seconds_per_image', 'median_ratio_to_float'),
                           ('features_seconds_per_image', 'features_ratio_to_float')):
            row[ratio] = row[key] / reference[key]


def markdown(part: dict) -> str:
    """The part's table: one row per variant."""
    repeats = f'{part["feature_repeats"]} x {part["images"]}'
    return '\n'.join([
        f'## {TITLE} ({size_text(part["image_size"])}, {part["images"]} images after 1 '
        f'warm-up, round-robin across the variants)', '',
        table(['variant', 's/image (mean)', 'x float (mean)', 'x float (median)',
               f'backbone+neck s/image (median of {repeats})', 'backbone+neck x float',
               'detections/image', 'calib s'],
              [(r['variant'], r['seconds_per_image'], r['ratio_to_float'],
                r['median_ratio_to_float'], r['features_seconds_per_image'],
                r['features_ratio_to_float'], r['detections_per_image'], r['calib_seconds'])
               for r in part['rows']])])

"""Results over calibration draws: one record per (method, bits, draw) -> mean and spread.

A method's score on the small demo splits depends on which images calibrated it. The
demo therefore calibrates every method on several independent draws of train images
(``IGQCalibrationHook(draw=k)``) and reports, per (method, bits), the mean and the
sample standard deviation over draws. A ranking between two methods is only meaningful
where their means differ by more than the spread.
"""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence

# methods whose result does not depend on the calibration images: one run, not one per draw
DRAW_FREE = ('float', 'upper-bound')

# columns averaged over draws; those listed in SPREAD_COLUMNS also get a ``<column>_std``
MEAN_COLUMNS = ('kl', 'feat_err', 'gbops', 'calib_seconds', 'eval_seconds')
SPREAD_COLUMNS = ('kl', 'feat_err')


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: Sequence[Mapping], metrics: Sequence[str]) -> list[dict]:
    """One record per (method, w_bits, a_bits), in first-seen order.

    Args:
        records: per-draw records (``method``, ``w_bits``, ``a_bits``, ``g_avg``, the
            ``metrics``, :data:`MEAN_COLUMNS`; ``kl`` / ``feat_err`` may be ``None``).
        metrics: the metric columns.

    Returns:
        Records with the means under the same keys, ``<metric>_std`` (sample standard
        deviation, 0 for one draw) for every metric and :data:`SPREAD_COLUMNS`, and
        ``draws``.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for record in records:
        groups.setdefault((record['method'], record['w_bits'], record['a_bits']),
                          []).append(record)
    summary = []
    for (method, w_bits, a_bits), group in groups.items():
        row = dict(method=method, w_bits=w_bits, a_bits=a_bits, g_avg=group[0]['g_avg'],
                   draws=len(group))
        for column in (*metrics, *MEAN_COLUMNS):
            values = [r[column] for r in group if r.get(column) is not None]
            if not values:
                row[column] = None
                continue
            mean, std = _mean_std(values)
            row[column] = mean
            if column in metrics or column in SPREAD_COLUMNS:
                row[f'{column}_std'] = std
        summary.append(row)
    return summary


def format_spread(mean: float | None, std: float | None, digits: int) -> str:
    """``'0.612 ± 0.004'``; the mean alone without a spread; ``'-'`` for ``None``."""
    if mean is None:
        return '-'
    if not std:
        return f'{mean:.{digits}f}'
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def significant_digits(value_range: tuple[float, float]) -> int:
    """Decimals of a metric living in ``value_range`` (mAP in [0, 1]: 3; mIoU in
    [0, 100]: 2)."""
    return 3 if value_range[1] <= 1.0 else 2

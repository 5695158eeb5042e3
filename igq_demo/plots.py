"""PNG plots of demo results (matplotlib, Agg backend; no mm imports)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def value_limits(values: Sequence[float], value_range: tuple[float, float],
                 margin: float = 0.15) -> tuple[float, float]:
    """Axis limits that frame ``values`` (a margin of their span on each side), within
    ``value_range``; a flat set of values gets a small window around it."""
    low, high = min(values), max(values)
    span = high - low or max(abs(high) * 0.05, (value_range[1] - value_range[0]) * 0.01)
    return (max(value_range[0], low - margin * span), min(value_range[1], high + margin * span))


def plot_metrics_by_method(records: Sequence[Mapping], metrics: Sequence[str],
                           value_range: tuple[float, float], path: str, title: str,
                           zoom: float = 0.15) -> str:
    """Grouped bars of each metric per method, one bar per bit-width, labelled with
    their values, with error bars of ``<metric>_std`` (the spread over calibration
    draws) where records have it; the float value is a dashed line. The value axis
    frames the float value and the bars within ``zoom`` of the metric's range below it
    (not the metric's whole range), so that the differences between the competitive
    methods show; a bar further down is cut at the axis and labelled with its value
    and a down arrow.

    Args:
        records: result records with ``method``, ``w_bits``, ``a_bits``, the
            ``metrics`` and optionally ``<metric>_std`` (float records have
            ``w_bits == 32``).
        metrics: the metric columns, one panel each.
        value_range: the metrics' range (e.g. ``(0, 1)`` for mAP, ``(0, 100)`` for mIoU).
        path: output PNG.
        title: the figure's title.
        zoom: the framed span below the float value (or the best bar), as a fraction
            of ``value_range``.
    """
    methods = list(dict.fromkeys(r['method'] for r in records))
    settings = sorted({(r['w_bits'], r['a_bits']) for r in records if r['method'] != 'float'})
    float_record = next((r for r in records if r['method'] == 'float'), None)
    quant_methods = [m for m in methods if m != 'float']
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6.0, 1.3 * len(quant_methods) + 2)
                                                       * len(metrics), 4.6), squeeze=False)
    width = 0.8 / max(1, len(settings))
    for ax, metric in zip(axes[0], metrics):
        series = []
        for k, (w_bits, a_bits) in enumerate(settings):
            found = [next((r for r in records if r['method'] == m
                           and (r['w_bits'], r['a_bits']) == (w_bits, a_bits)), None)
                     for m in quant_methods]
            xs = [i + (k - (len(settings) - 1) / 2) * width for i in range(len(quant_methods))]
            series.append((f'W{w_bits}/A{a_bits}', [(x, r[metric], r.get(f'{metric}_std') or 0.0)
                                                    for x, r in zip(xs, found) if r is not None]))
        values = [v for _, present in series for _, v, _ in present]
        top = float_record[metric] if float_record is not None else max(values, default=0.0)
        floor = top - zoom * (value_range[1] - value_range[0])
        shown = [v + sign * e for _, present in series for _, v, e in present
                 if v >= floor for sign in (-1, 1)] + [top]
        low, high = value_limits(shown, value_range)
        for label, present in series:
            ax.bar([x for x, _, _ in present], [v for _, v, _ in present], width,
                   yerr=[e for _, _, e in present], capsize=3, error_kw=dict(elinewidth=1),
                   label=label)
            for x, v, _ in present:
                cut = v < low
                ax.text(x, low if cut else min(v, high), f'{v:.3g}' + (' ↓' if cut else ''),
                        ha='center', va='bottom', fontsize=7, rotation=90 if cut else 0)
        if float_record is not None:
            ax.axhline(float_record[metric], color='k', linestyle='--',
                       label=f'float {float_record[metric]:.3g}')
        ax.set_xticks(range(len(quant_methods)), quant_methods, rotation=20, ha='right')
        ax.set_ylabel(metric)
        ax.set_ylim(low, high)
        ax.legend(fontsize=8, loc='best', framealpha=0.85)
        ax.grid(axis='y', alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups_per_layer(allocations: Mapping[str, Mapping[str, int]], path: str,
                          g_avg: int | None = None, title: str = '') -> str:
    """The group count the allocation chose for every layer, one bar series per
    setting (e.g. ``{'W4/A4': {...}, 'W6/A6': {...}}``), with the ``G_avg`` line."""
    names = list(dict.fromkeys(n for groups in allocations.values() for n in groups))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.2), 4.6))
    width = 0.8 / max(1, len(allocations))
    for k, (label, groups) in enumerate(allocations.items()):
        xs = [i + (k - (len(allocations) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [groups.get(n, 0) for n in names], width, label=label)
    if g_avg is not None:
        ax.axhline(g_avg, color='k', linestyle='--', linewidth=1, label=f'G_avg = {g_avg}')
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=6)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel('chosen G')
    ax.set_title(title or 'Group-size allocation per layer')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_channel_ranges(stats: Mapping[str, Mapping[str, float]], path: str,
                        images: int) -> str:
    """Per-layer channel-range statistics (the phenomena IGQ targets), two panels.

    Args:
        stats: ``{'variation': {layer: v}, 'spread': {layer: s}}``: the variation of
            each channel's range across images (coefficient of variation, mean over
            channels) and the largest over the median channel range on one image.
        path: output PNG.
        images: number of images the statistics were computed on.
    """
    names = list(stats['variation'])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.16), 7.5),
                                      sharex=True)
    top.bar(range(len(names)), [stats['variation'][n] for n in names], color='tab:orange')
    top.set_ylabel('coefficient of variation')
    top.set_title(f'Variation of each channel\'s range across {images} images '
                  f'(what static groups cannot follow)')
    bottom.bar(range(len(names)), [stats['spread'][n] for n in names], color='tab:purple')
    bottom.set_yscale('log')
    bottom.set_ylabel('max / median channel range')
    bottom.set_title('Spread of channel ranges within an image (what one range per layer '
                     'pays for)')
    bottom.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(name: str) -> str:
    return (name.replace('backbone.', '').replace('stages.', 's').replace('blocks.', 'b')
            .replace('.attn.w_msa', '').replace('_quantizer', '').replace('.ffn.layers', '.ffn'))


def plot_metric_by_count(rows: Sequence[Mapping], metric: str, value_range: tuple[float, float],
                         path: str, title: str) -> str:
    """One line per method of ``metric`` (mean, error bars: ``<metric>_std``) against the
    number of calibration images (``calib_images``, log axis); the float value dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    shown = []
    for method in dict.fromkeys(r['method'] for r in rows if r['method'] != 'float'):
        points = sorted((r['calib_images'], r[metric], r.get(f'{metric}_std') or 0.0)
                        for r in rows if r['method'] == method)
        ax.errorbar([p[0] for p in points], [p[1] for p in points],
                    yerr=[p[2] for p in points], marker='o', capsize=3, label=method)
        shown += [v + sign * e for _, v, e in points for sign in (-1, 1)]
    floats = [r[metric] for r in rows if r['method'] == 'float']
    if floats:
        ax.axhline(floats[0], color='k', linestyle='--', label=f'float {floats[0]:.3g}')
        shown.append(floats[0])
    ax.set_xscale('log')
    counts = sorted({r['calib_images'] for r in rows})
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel('calibration images per draw')
    ax.set_ylabel(metric)
    ax.set_ylim(*value_limits(shown, value_range))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""PNG plots of demo results (matplotlib, Agg backend; no mm imports)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def plot_metrics_by_method(records: Sequence[Mapping], metrics: Sequence[str],
                           value_range: tuple[float, float], path: str, title: str) -> str:
    """Grouped bars of each metric per method, one bar per bit-width.

    Args:
        records: result records with ``method``, ``w_bits``, ``a_bits`` and the
            ``metrics`` (float records have ``w_bits == 32``).
        metrics: the metric columns, one panel each.
        value_range: the metrics' range (e.g. ``(0, 1)`` for mAP, ``(0, 100)`` for mIoU).
        path: output PNG.
        title: the figure's title.
    """
    methods = list(dict.fromkeys(r['method'] for r in records))
    settings = sorted({(r['w_bits'], r['a_bits']) for r in records if r['method'] != 'float'})
    float_record = next((r for r in records if r['method'] == 'float'), None)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    width = 0.8 / max(1, len(settings))
    quant_methods = [m for m in methods if m != 'float']
    for ax, metric in zip(axes[0], metrics):
        for k, (w_bits, a_bits) in enumerate(settings):
            values = [next((r[metric] for r in records if r['method'] == m
                            and (r['w_bits'], r['a_bits']) == (w_bits, a_bits)), 0.0)
                      for m in quant_methods]
            xs = [i + (k - (len(settings) - 1) / 2) * width for i in range(len(quant_methods))]
            ax.bar(xs, values, width, label=f'W{w_bits}/A{a_bits}')
        if float_record is not None:
            ax.axhline(float_record[metric], color='k', linestyle='--', label='float')
        ax.set_xticks(range(len(quant_methods)), quant_methods, rotation=20)
        ax.set_ylabel(metric)
        ax.set_ylim(*value_range)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_groups_per_layer(groups: Mapping[str, int], path: str, title: str = '') -> str:
    """Bar chart of the group count the allocation chose for every layer."""
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.16), 4.2))
    ax.bar(range(len(names)), [groups[n] for n in names], color='tab:blue')
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=6)
    ax.set_ylabel('chosen G')
    ax.set_title(title or 'Group-size allocation per layer')
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

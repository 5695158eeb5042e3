"""PNG plots of demo results (matplotlib, Agg backend; no mm imports)."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def plot_ap_by_method(records: Sequence[Mapping], path: str) -> str:
    """Grouped bars of bbox and segm mAP per method, one bar per bit-width.

    Args:
        records: result records with ``method``, ``w_bits``, ``a_bits``,
            ``bbox_mAP``, ``segm_mAP`` (float records have ``w_bits == 32``).
        path: output PNG.
    """
    methods = list(dict.fromkeys(r['method'] for r in records))
    settings = sorted({(r['w_bits'], r['a_bits']) for r in records if r['method'] != 'float'})
    float_record = next((r for r in records if r['method'] == 'float'), None)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(settings))
    quant_methods = [m for m in methods if m != 'float']
    for ax, metric in zip(axes, ('bbox_mAP', 'segm_mAP')):
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
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.suptitle('COCO mAP on the synthetic val split by activation quantizer')
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


def plot_range_variation(variation: Mapping[str, float], path: str, images: int) -> str:
    """Per-layer variation of channel ranges across images (the phenomenon IGQ targets).

    Args:
        variation: ``{layer: mean over channels of std/mean of the per-image channel
            range (max - min)}``.
        path: output PNG.
        images: number of images the statistic was computed on.
    """
    names = list(variation)
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.16), 4.2))
    ax.bar(range(len(names)), [variation[n] for n in names], color='tab:orange')
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=90, fontsize=6)
    ax.set_ylabel('coefficient of variation')
    ax.set_title(f'Channel range variation across {images} images, per quantized layer')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(name: str) -> str:
    return (name.replace('backbone.', '').replace('stages.', 's').replace('blocks.', 'b')
            .replace('.attn.w_msa', '').replace('_quantizer', '').replace('.ffn.layers', '.ffn'))

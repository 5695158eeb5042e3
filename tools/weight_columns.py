#!/usr/bin/env python
"""What per-output-channel 4-bit weights do to the Linear columns a pretrained-like
variant shrinks (docs/results.md, Mask R-CNN section).

The variant (``tools/make_pretrained_like.py``) multiplies a LayerNorm's channel ``c``
by ``f_c`` and divides column ``c`` of the next Linear by ``f_c``: the function is the
same, but the columns of the outlier channels (``f_c`` 10-50) are 10-50x smaller than
their neighbours in the same row, and one weight quantizer per output row gives them
the step of those neighbours. This tool compares every rescaled Linear of the variant
with the same Linear of the plain checkpoint, quantized with the weight quantizer of
every method but ``repq`` (:func:`igq_plugin.quantizers.search_weight_qparams`).

Per column class (outlier columns ``f_c >= --outlier``, the others) it prints:
- ``zero codes``: share of the weights quantized to exactly 0;
- ``|w| / step``: median over the class of ``|w|`` divided by its row's step;
- ``column error``: median of ``||Q(W)[:, c] - W[:, c]|| / ||W[:, c]||``, which is also
  the relative error of that channel's contribution to the Linear's output (the channel's
  activation multiplies the whole column).

    python tools/weight_columns.py demo_models/mask-rcnn_swin-demo.pth \\
        work_dirs/demo/variants/mask-rcnn_pretrained-like.pth
"""
import argparse
import os
import sys

import torch

from igq_plugin.quant.primitives import dequantize, quantize
from igq_plugin.quantizers import search_weight_qparams


def load_state(path: str) -> dict[str, torch.Tensor]:
    """The float tensors of a checkpoint's state dict, as float32."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    state = state.get('state_dict', state)
    return {k: v.float() for k, v in state.items() if v.is_floating_point()}


def column_factors(plain: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
    """``[C_in]`` factors ``f_c`` with ``variant[:, c] = plain[:, c] / f_c``."""
    return plain.norm(dim=0) / variant.norm(dim=0).clamp_min(1e-30)


def rescaled_linears(plain: dict, variant: dict, tolerance: float = 1e-3) -> dict:
    """``{key: [C_in] factors}`` of every 2-D weight whose columns the variant rescaled."""
    found = {}
    for key, weight in variant.items():
        if weight.dim() != 2 or key not in plain or plain[key].shape != weight.shape:
            continue
        factors = column_factors(plain[key], weight)
        if (factors - 1).abs().max() > tolerance:
            found[key] = factors
    return found


def column_statistics(weight: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Per-entry and per-column figures of ``weight`` ``[C_out, C_in]`` quantized per row.

    Returns:
        ``zero`` ``[C_out, C_in]`` (bool: the entry's code is the zero point),
        ``ratio`` ``[C_out, C_in]`` (``|w| / step`` of its row) and
        ``error`` ``[C_in]`` (relative error of each column).
    """
    scale, zero_point = search_weight_qparams(weight, bits)
    scale, zero_point = scale[:, None], zero_point[:, None]
    codes = quantize(weight, scale, zero_point, bits)
    error = ((dequantize(codes, scale, zero_point) - weight).norm(dim=0)
             / weight.norm(dim=0).clamp_min(1e-30))
    return dict(zero=codes == zero_point, ratio=weight.abs() / scale, error=error)


def summarize(plain: dict, variant: dict, bits: int, outlier: float) -> list[dict]:
    """One row per (column class, checkpoint) over every rescaled Linear."""
    linears = rescaled_linears(plain, variant)
    if not linears:
        raise ValueError('no Linear of the second checkpoint has rescaled columns: is it a '
                         'pretrained-like variant of the first?')
    rows = []
    for name, state in (('plain', plain), ('variant', variant)):
        classes = {'outlier': ([], [], []), 'other': ([], [], [])}
        for key, factors in linears.items():
            stats = column_statistics(state[key], bits)
            for label, mask in (('outlier', factors >= outlier), ('other', factors < outlier)):
                zeros, ratios, errors = classes[label]
                zeros.append(stats['zero'][:, mask].flatten().float())
                ratios.append(stats['ratio'][:, mask].flatten())
                errors.append(stats['error'][mask])
        for label, (zeros, ratios, errors) in classes.items():
            rows.append(dict(checkpoint=name, columns=label, linears=len(linears),
                             count=int(torch.cat(errors).numel()),
                             zero_codes=float(torch.cat(zeros).mean()),
                             ratio=float(torch.cat(ratios).median()),
                             column_error=float(torch.cat(errors).median())))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('plain', help='the float checkpoint')
    parser.add_argument('variant', help='its pretrained-like variant')
    parser.add_argument('--bits', type=int, default=4, help='weight bit-width')
    parser.add_argument('--outlier', type=float, default=10.0,
                        help='columns with a factor at least this are the outlier class')
    args = parser.parse_args(argv)
    for path in (args.plain, args.variant):
        if not os.path.isfile(path):
            print(f'error: checkpoint {path!r} does not exist', file=sys.stderr)
            return 2
    try:
        rows = summarize(load_state(args.plain), load_state(args.variant), args.bits,
                         args.outlier)
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'{rows[0]["linears"]} rescaled Linears, W{args.bits} per output channel')
    print('| checkpoint | columns | count | zero codes | median |w| / step | '
          'median column error |')
    print('|---|---|---|---|---|---|')
    for row in rows:
        relation = '>=' if row['columns'] == 'outlier' else '<'
        print(f'| {row["checkpoint"]} | {row["columns"]} (f {relation} {args.outlier:g}) | '
              f'{row["count"]} | {row["zero_codes"]:.1%} | {row["ratio"]:.2f} | '
              f'{row["column_error"]:.3f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())

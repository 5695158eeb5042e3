"""Plain-text tables of what was quantized and what it cost (no mm imports)."""
from __future__ import annotations

from typing import Mapping, Sequence

from ..quantizers import ActivationQuantizer, IGQQuantizer, UpperBoundQuantizer
from ..search.bops import layer_bops
from ..search.model_costs import layer_cost


def layer_rows(quantizers: Mapping[str, ActivationQuantizer],
               sensitivity: Mapping[str, Mapping[int, float]] | None = None) -> list[dict]:
    """One row per quantized operand: layer, method, bits, items, G, Omega(G), BOPs.

    Args:
        quantizers: calibrated activation quantizers by name.
        sensitivity: optional ``{layer: {G: Omega}}`` from the allocation search.
    """
    rows = []
    for name, quantizer in quantizers.items():
        per_item = isinstance(quantizer, UpperBoundQuantizer)
        groups, _ = quantizer.bop_groups(quantizer.channels or 1)
        row = dict(layer=name, method=quantizer.method, a_bits=quantizer.bits,
                   items=quantizer.channels if quantizer.layout.fixed_items else 'rows',
                   groups='per-item' if per_item else groups, sensitivity=None, bops=None)
        if quantizer.last_input_shape is not None and quantizer.op_cost is not None:
            cost = layer_cost(name, quantizer)
            charged, dynamic = quantizer.bop_groups(cost.channels)
            row['bops'] = layer_bops(cost, charged, dynamic=dynamic)
        if sensitivity is not None and isinstance(quantizer, IGQQuantizer) and name in sensitivity:
            row['sensitivity'] = sensitivity[name].get(groups)
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Render dict rows as an aligned plain-text table (numbers in short form)."""
    if not rows:
        return '(empty)'
    columns = list(columns or rows[0].keys())

    def cell(value):
        if value is None:
            return '-'
        if isinstance(value, float):
            return f'{value:.4g}'
        if isinstance(value, int) and abs(value) >= 10**6:
            return f'{value / 1e9:.4f}G'
        return str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    line = lambda cells: '  '.join(v.ljust(w) for v, w in zip(cells, widths))  # noqa: E731
    return '\n'.join([line(columns), line(['-' * w for w in widths])] + [line(r) for r in body])

"""Group-size allocation of a calibrated model under the budget "every layer at G_avg"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..quant import IGQQuantizer
from .allocation import solve_allocation
from .bops import layer_bops, reference_groups
from .model_costs import model_costs
from .sensitivity import apply_allocation


@dataclass(frozen=True)
class AllocationResult:
    """Outcome of :func:`allocate_groups`.

    Attributes:
        groups: chosen G per layer.
        sensitivity: ``{layer: {G: Omega}}`` tables the solver used.
        bops: ``{layer: {G: BOPs}}`` cost tables.
        budget: total BOPs allowed (every layer at ``min(G_avg, channels)``).
        total_bops: total BOPs of the chosen allocation (``<= budget``).
    """

    groups: dict[str, int]
    sensitivity: dict[str, dict[int, float]]
    bops: dict[str, dict[int, int]]
    budget: int
    total_bops: int


def allocate_groups(layers: Mapping[str, IGQQuantizer], sensitivity: Mapping[str, Mapping[int, float]],
                    g_avg: int, budget: int | None = None, method: str = 'milp') -> AllocationResult:
    """Solve and apply the group-size allocation.

    Args:
        layers: calibrated IGQ quantizers (they recorded their costs).
        sensitivity: ``{layer: {G: Omega}}`` over each layer's candidates.
        g_avg: the reference group count of the budget.
        budget: explicit BOP budget; ``None`` means every layer at ``G_avg``.
        method: solver (``'milp'``, ``'dp'`` or ``'brute'``).

    Raises:
        ValueError: when the budget cannot be met (the message gives the budget and
            the cheapest achievable total).
    """
    costs = model_costs(layers)
    bops = {name: {g: layer_bops(costs[name], g) for g in q.candidates}
            for name, q in layers.items()}
    if budget is None:
        budget = 0
        for name, quantizer in layers.items():
            reference = reference_groups(costs[name], g_avg)
            if reference not in bops[name]:
                raise ValueError(f'{name}: G_avg={g_avg} (capped to {reference}) is not one of '
                                 f'its calibrated candidates {quantizer.candidates}')
            budget += bops[name][reference]
    tables = {name: {g: float(sensitivity[name][g]) for g in bops[name]} for name in layers}
    groups = solve_allocation(tables, bops, budget, method=method)
    apply_allocation(layers, groups)
    total = sum(bops[name][g] for name, g in groups.items())
    return AllocationResult(groups, tables, bops, budget, total)

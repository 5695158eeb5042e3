"""Group-size allocation of a calibrated model under the budget "every layer at G_avg"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..quantizers import IGQQuantizer
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
        unmeasured: layers whose group count the predictions do not depend on (the
            same ``Omega`` for every G), kept at the budget's G instead of being
            allocated.
    """

    groups: dict[str, int]
    sensitivity: dict[str, dict[int, float]]
    bops: dict[str, dict[int, int]]
    budget: int
    total_bops: int
    unmeasured: tuple[str, ...] = ()


def allocate_groups(layers: Mapping[str, IGQQuantizer],
                    sensitivity: Mapping[str, Mapping[int, float]], g_avg: int,
                    budget: int | None = None) -> AllocationResult:
    """Solve and apply the group-size allocation.

    A layer whose sensitivity is the same for every candidate does not feed the
    predictions the search compares (e.g. an RPN, mask-head or box-regression layer under
    per-RoI class scores on fixed float proposals, or an FPN level no RoI is pooled
    from): the search has no evidence about it, and the solver would give it the
    cheapest G. It keeps the budget's G (``min(G_avg, channels)``) and its BOPs; the
    other layers share the rest of the budget.

    Args:
        layers: calibrated IGQ quantizers (they recorded their costs).
        sensitivity: ``{layer: {G: Omega}}`` over each layer's candidates.
        g_avg: the reference group count of the budget.
        budget: explicit BOP budget; ``None`` means every layer at ``G_avg``.

    Raises:
        ValueError: when the budget cannot be met (the message gives the budget and
            the cheapest achievable total).
    """
    costs = model_costs(layers)
    bops = {name: {g: layer_bops(costs[name], g) for g in q.candidates}
            for name, q in layers.items()}
    reference = {}
    for name, quantizer in layers.items():
        reference[name] = reference_groups(costs[name], g_avg)
        if reference[name] not in bops[name]:
            raise ValueError(f'{name}: G_avg={g_avg} (capped to {reference[name]}) is not one '
                             f'of its calibrated candidates {quantizer.candidates}')
    if budget is None:
        budget = sum(bops[name][reference[name]] for name in layers)
    tables = {name: {g: float(sensitivity[name][g]) for g in bops[name]} for name in layers}
    unmeasured = tuple(name for name in layers if len(set(tables[name].values())) == 1)
    groups = {name: reference[name] for name in unmeasured}
    measured = [name for name in layers if name not in groups]
    if measured:
        solved = solve_allocation({n: tables[n] for n in measured},
                                  {n: bops[n] for n in measured},
                                  budget - sum(bops[n][g] for n, g in groups.items()))
        groups = {name: solved.get(name, groups.get(name)) for name in layers}
    apply_allocation(layers, groups)
    total = sum(bops[name][g] for name, g in groups.items())
    return AllocationResult(groups, tables, bops, budget, total, unmeasured)

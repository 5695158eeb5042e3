"""Group-size allocation under a BOP budget (a multiple-choice knapsack).

For every layer ``l`` pick exactly one candidate group count ``G_l`` so that
``sum_l Omega_l(G_l)`` is minimal subject to ``sum_l BOP_l(G_l) <= budget``
(docs/method.md, section 5). Costs are integers and the budget is
respected exactly; two solvers reach the same optimal objective:

- ``'milp'``: ``scipy.optimize.milp`` (HiGHS) on binary variables, the solution
  re-checked in exact integers;
- ``'dp'``: an exact dynamic programme over the layers that keeps the Pareto
  front of (cost, sensitivity) partial solutions; needs only numpy, and is the
  fallback of ``'milp'``.

Conventions:
    - A sensitivity of ``+inf`` marks a forbidden candidate; NaN and ``-inf``
      are errors. Negative finite sensitivities are allowed.
    - Ties (equal objective) are broken deterministically, the same way on
      every call, but not by a rule shared by the methods: ``'milp'`` returns
      the solution HiGHS finds, ``'dp'`` the cheapest of the optimal ones.
      Compare objective values, not assignments.

Example:
    >>> sens = {'a': {1: 3.0, 2: 1.0}, 'b': {1: 2.0, 2: 0.5}}
    >>> cost = {'a': {1: 10, 2: 20}, 'b': {1: 10, 2: 15}}
    >>> solve_allocation(sens, cost, budget=30, method='dp')
    {'a': 2, 'b': 1}
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ['ALLOCATION_METHODS', 'solve_allocation']

#: Solver names accepted by :func:`solve_allocation`.
ALLOCATION_METHODS = ('milp', 'dp')

# Partial costs are kept in int64 while every sum stays below this bound, and
# in Python ints (numpy object arrays) otherwise.
_INT64_SAFE = 2**62


@dataclass(frozen=True)
class _Problem:
    """A validated, reduced allocation problem.

    Costs are shifted by each layer's cheapest allowed cost, so every layer has
    a zero-cost choice and the budget becomes the ``slack`` left over after the
    cheapest assignment. Choices that cannot fit the slack, or that have an
    infinite sensitivity, are removed.

    Attributes:
        names: Layer names, in input order.
        choices: Per layer, the allowed candidate group counts, ascending.
        sens: Per layer, the sensitivity of every allowed choice.
        cost: Per layer, the shifted cost (>= 0) of every allowed choice.
        slack: Budget minus the minimum achievable cost, >= 0.
    """

    names: tuple[str, ...]
    choices: tuple[tuple[int, ...], ...]
    sens: tuple[tuple[float, ...], ...]
    cost: tuple[tuple[int, ...], ...]
    slack: int


def _check_candidate(name: str, g: object) -> int:
    if isinstance(g, bool) or not isinstance(g, numbers.Integral) or g < 1:
        raise ValueError(f'candidate group counts must be ints >= 1, got {g!r} for layer {name!r}')
    return int(g)


def _check_cost(name: str, g: int, c: object) -> int:
    if isinstance(c, bool) or not isinstance(c, numbers.Integral):
        raise TypeError(f'cost[{name!r}][{g}] must be an int (exact BOPs), got {c!r} '
                        f'({type(c).__name__})')
    if c < 0:
        raise ValueError(f'cost[{name!r}][{g}] must be >= 0, got {c}')
    return int(c)


def _check_sens(name: str, g: int, s: object) -> float:
    try:
        value = float(s)
    except (TypeError, ValueError) as err:
        raise TypeError(f'sensitivity[{name!r}][{g}] must be a real number, got {s!r}') from err
    if math.isnan(value) or value == -math.inf:
        raise ValueError(f'sensitivity[{name!r}][{g}] must be finite or +inf, got {value}')
    return value


def _check_tables(sensitivity: Mapping[str, Mapping[int, float]],
                  cost: Mapping[str, Mapping[int, int]]
                  ) -> tuple[list[str], list[list[int]], list[list[float]], list[list[int]]]:
    """Validate the two tables; return names, candidates, sensitivities, costs.

    Candidates are sorted ascending per layer; layers keep the order of
    ``sensitivity``.

    Raises:
        ValueError: On empty input or mismatched layer names or candidate sets.
        TypeError: On non-integer costs or non-numeric sensitivities.
    """
    if len(sensitivity) == 0:
        raise ValueError('sensitivity is empty: need at least one layer')
    names = list(sensitivity)
    if set(names) != set(cost):
        missing = sorted(set(names) - set(cost))
        extra = sorted(set(cost) - set(names))
        raise ValueError(f'sensitivity and cost must name the same layers; missing from cost: '
                         f'{missing}, missing from sensitivity: {extra}')
    all_g, all_s, all_c = [], [], []
    for name in names:
        if len(sensitivity[name]) == 0:
            raise ValueError(f'layer {name!r} has no candidate group counts')
        if set(sensitivity[name]) != set(cost[name]):
            raise ValueError(f'layer {name!r}: candidates differ between sensitivity '
                             f'{sorted(sensitivity[name])} and cost {sorted(cost[name])}')
        gs = sorted(_check_candidate(name, g) for g in sensitivity[name])
        all_g.append(gs)
        all_s.append([_check_sens(name, g, sensitivity[name][g]) for g in gs])
        all_c.append([_check_cost(name, g, cost[name][g]) for g in gs])
    return names, all_g, all_s, all_c


def _reduce(names: list[str], all_g: list[list[int]], all_s: list[list[float]],
            all_c: list[list[int]], budget: int) -> tuple[_Problem, list[int]]:
    """Drop forbidden choices, shift the costs and check feasibility.

    Returns:
        The reduced problem and the per-layer cost shifts.

    Raises:
        ValueError: If a layer has only ``+inf`` sensitivities, or if the
            budget is below the minimum achievable cost.
    """
    allowed = []
    for name, gs, ss in zip(names, all_g, all_s):
        keep = [j for j, s in enumerate(ss) if s != math.inf]
        if not keep:
            raise ValueError(f'layer {name!r}: every candidate {gs} has sensitivity +inf '
                             f'(forbidden); at least one must be finite')
        allowed.append(keep)
    shifts = [min(cs[j] for j in keep) for cs, keep in zip(all_c, allowed)]
    min_total = sum(shifts)
    if min_total > budget:
        raise ValueError(f'infeasible budget: budget {budget} BOPs is below the minimum '
                         f'achievable cost {min_total} BOPs (cheapest allowed candidate in '
                         f'every layer)')
    slack = budget - min_total
    choices, sens, cost = [], [], []
    for gs, ss, cs, keep, shift in zip(all_g, all_s, all_c, allowed, shifts):
        # A choice dearer than the slack cannot be part of any feasible solution.
        keep = [j for j in keep if cs[j] - shift <= slack]
        choices.append(tuple(gs[j] for j in keep))
        sens.append(tuple(ss[j] for j in keep))
        cost.append(tuple(cs[j] - shift for j in keep))
    problem = _Problem(tuple(names), tuple(choices), tuple(sens), tuple(cost), slack)
    return problem, shifts


def _solve_dp(p: _Problem) -> list[int]:
    """Exact DP over layers keeping the Pareto front of partial solutions.

    After layer ``l`` the front holds partial assignments of layers ``0..l``
    sorted by strictly increasing cost and strictly decreasing sensitivity; a
    partial solution that is no cheaper and no better than another one cannot
    complete to a better full solution, so dropping it is exact. Among equal
    sensitivities the cheaper one is kept, so the result is the cheapest
    optimal assignment.

    Returns:
        Per layer, the index of the chosen candidate.
    """
    n = len(p.choices)
    # Every remaining layer can still add zero cost, so a partial cost only has
    # to fit the slack.
    max_total = sum(max(c) for c in p.cost)
    dtype = np.int64 if max_total < _INT64_SAFE else object
    front_cost = np.zeros(1, dtype=dtype)
    front_sens = np.zeros(1, dtype=np.float64)
    parents: list[np.ndarray] = []  # per layer: index into the previous front
    picks: list[np.ndarray] = []    # per layer: index of the chosen candidate
    for layer in range(n):
        c = np.array(p.cost[layer], dtype=dtype)
        s = np.array(p.sens[layer], dtype=np.float64)
        k = len(c)
        new_cost = (front_cost[:, None] + c[None, :]).ravel()   # [F * K]
        new_sens = (front_sens[:, None] + s[None, :]).ravel()   # [F * K]
        ok = np.nonzero(new_cost <= p.slack)[0]
        # Sort by cost, then sensitivity, then position (stable), and keep a
        # state only if it beats every cheaper-or-equal state's sensitivity.
        order = ok[np.argsort(new_sens[ok], kind='stable')]
        order = order[np.argsort(new_cost[order], kind='stable')]
        sens_sorted = new_sens[order]
        best_before = np.minimum.accumulate(np.concatenate(([np.inf], sens_sorted[:-1])))
        keep = order[sens_sorted < best_before]
        parents.append(keep // k)
        picks.append(keep % k)
        front_cost = new_cost[keep]
        front_sens = new_sens[keep]
    # The front's last state has the highest cost and the lowest sensitivity.
    state = len(front_cost) - 1
    result = [0] * n
    for layer in range(n - 1, -1, -1):
        result[layer] = int(picks[layer][state])
        state = int(parents[layer][state])
    return result


def _solve_milp(p: _Problem) -> list[int] | None:
    """Solve with ``scipy.optimize.milp``; ``None`` if HiGHS gives no solution.

    Conditioning: the costs are divided by the slack (the budget row becomes
    ``a @ x <= 1`` with ``0 <= a <= 1``), and each layer's sensitivities are
    shifted to start at 0 and scaled so that the largest per-layer range is
    ``1e6``: HiGHS stops at an absolute gap of 1e-6, which this makes
    negligible (1e-12 of the largest range) next to the optimum.

    Returns:
        Per layer, the index of the chosen candidate, or ``None``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    sizes = [len(c) for c in p.choices]
    n_var = sum(sizes)
    starts = np.cumsum([0] + sizes[:-1])
    ranges = [max(s) - min(s) for s in p.sens]
    scale = 1e6 / max(ranges) if max(ranges) > 0 else 1.0
    obj = np.concatenate([(np.array(s) - min(s)) * scale for s in p.sens])
    rows = np.repeat(np.arange(len(sizes)), sizes)
    onehot = csr_matrix((np.ones(n_var), (rows, np.arange(n_var))), shape=(len(sizes), n_var))
    constraints = [LinearConstraint(onehot, 1, 1)]
    if p.slack > 0:
        # Float division of exact ints: correctly rounded even for huge ints.
        a = np.array([ci / p.slack for c in p.cost for ci in c], dtype=np.float64)
        constraints.append(LinearConstraint(a[None, :], -np.inf, 1.0))
    # With slack == 0 every remaining choice costs 0 (see _reduce): no budget row.
    res = milp(obj, integrality=np.ones(n_var), bounds=Bounds(0, 1),
               constraints=constraints, options={'mip_rel_gap': 0.0})
    if res.x is None:
        return None
    return [int(np.argmax(res.x[s:s + k])) for s, k in zip(starts, sizes)]


def solve_allocation(sensitivity: Mapping[str, Mapping[int, float]],
                     cost: Mapping[str, Mapping[int, int]], budget: int,
                     method: str = 'milp') -> dict[str, int]:
    """Pick one group count per layer: least total sensitivity within the budget.

    Args:
        sensitivity: ``{layer: {G: Omega_l(G)}}``; finite or ``+inf``
            (forbidden choice).
        cost: ``{layer: {G: BOP_l(G)}}`` with the same layers and candidates;
            non-negative ints.
        budget: Largest allowed total cost, an int > 0 (e.g.
            :func:`igq_plugin.search.allocate_groups` sets "every layer at G_avg").
        method: ``'milp'`` (scipy HiGHS) or ``'dp'`` (exact Pareto DP, numpy
            only).

    Returns:
        ``{layer: G}`` in the order of ``sensitivity``; its total cost is
        ``<= budget`` exactly and its total sensitivity is minimal.

    Raises:
        ValueError: On empty input, mismatched layers or candidate sets, NaN or
            ``-inf`` sensitivities, a negative cost, a non-positive budget, an
            unknown method, or a budget below the minimum achievable cost.
        TypeError: On a non-integer cost or budget.
    """
    if method not in ALLOCATION_METHODS:
        raise ValueError(f'method must be one of {ALLOCATION_METHODS}, got {method!r}')
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise TypeError(f'budget must be an int (exact BOPs), got {budget!r}')
    budget = int(budget)
    if budget <= 0:
        raise ValueError(f'budget must be > 0 BOPs, got {budget}')
    names, all_g, all_s, all_c = _check_tables(sensitivity, cost)
    problem, _ = _reduce(names, all_g, all_s, all_c, budget)

    if method == 'dp':
        idx = _solve_dp(problem)
    else:
        idx = _solve_milp(problem)
        # HiGHS accepts a budget row violated by its feasibility tolerance
        # (~1e-6 of the normalised budget), so re-check in exact ints. If it
        # fails (or HiGHS returned nothing), fall back to the exact DP, which
        # also gives the true optimum in the case where HiGHS traded a hair
        # of budget for a better objective.
        if idx is None or sum(c[j] for c, j in zip(problem.cost, idx)) > problem.slack:
            idx = _solve_dp(problem)
    return {name: problem.choices[layer][j] for layer, (name, j) in enumerate(zip(names, idx))}

"""Tests of the group-size allocation solver (igq_plugin/search/allocation.py)."""
import doctest
import itertools
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

import igq_plugin.search.allocation as allocation_module
import igq_plugin.search.bops as bops_module
from igq_plugin.search import solve_allocation

CANDIDATES = (1, 2, 4, 8, 12, 16)


def _random_problem(rng, tighter, ties):
    """2-5 layers; costs increase and sensitivities decrease (noisily) with G."""
    sens, cost = {}, {}
    for i in range(rng.randint(2, 5)):
        gs = sorted(rng.sample(CANDIDATES, rng.randint(1, len(CANDIDATES))))
        c, s = rng.randint(1, 1000), rng.uniform(0.5, 2.0)
        sens[f'blocks.{i}'], cost[f'blocks.{i}'] = {}, {}
        for g in gs:
            noisy = s + rng.gauss(0.0, 0.05)
            sens[f'blocks.{i}'][g] = round(noisy, 1) if ties else noisy
            cost[f'blocks.{i}'][g] = c
            c += rng.randint(1, 1000)
            s *= rng.uniform(0.3, 1.0)
    budget = sum(cost[name][rng.choice(list(cost[name]))] for name in cost)
    if tighter:
        min_cost = sum(min(c.values()) for c in cost.values())
        budget = max(min_cost, budget - rng.randint(0, 1500))
    return sens, cost, budget


def allocation_summary(assignment, sens, cost):
    """``(total sensitivity, total cost)`` of an assignment (every layer, a candidate each)."""
    assert list(assignment) == list(sens)
    return (math.fsum(sens[n][g] for n, g in assignment.items()),
            sum(cost[n][g] for n, g in assignment.items()))


def _brute_optimum(sens, cost, budget):
    """Reference: best objective over every assignment that fits the budget."""
    names = list(sens)
    best = math.inf
    for gs in itertools.product(*(list(sens[n]) for n in names)):
        if sum(cost[n][g] for n, g in zip(names, gs)) <= budget:
            best = min(best, math.fsum(sens[n][g] for n, g in zip(names, gs)))
    return best


@pytest.mark.parametrize('chunk', range(4))
def test_matches_brute_force_on_random_problems(chunk):
    for k in range(60):  # 4 * 60 = 240 problems
        seed = 1000 * chunk + k
        rng = random.Random(seed)
        sens, cost, budget = _random_problem(rng, tighter=k % 3 == 1, ties=k % 5 == 4)
        expected = _brute_optimum(sens, cost, budget)
        for method in ('milp', 'dp'):
            assignment = solve_allocation(sens, cost, budget, method=method)
            assert list(assignment) == list(sens)
            total_sens, total_cost = allocation_summary(assignment, sens, cost)
            assert total_cost <= budget, (seed, method)
            assert abs(total_sens - expected) <= 1e-9, (seed, method, total_sens, expected)


@pytest.mark.parametrize('method', ['milp', 'dp'])
def test_budget_is_exact_for_large_integer_costs(method):
    # ~1e12 BOPs per layer; the better choice of 'b' overshoots the budget by 1 BOP,
    # far below the float resolution of a normalised budget row.
    base = 10**12
    sens = {'a': {1: 1.0, 2: 0.0}, 'b': {1: 1.0, 2: 0.5, 4: 0.0}, 'c': {1: 0.0}}
    cost = {'a': {1: base, 2: base + 7}, 'b': {1: base, 2: base + 3, 4: base + 5},
            'c': {1: 3 * base + 1}}
    budget = 5 * base + 1 + 7 + 4  # a=2 fits with b=2 (+3) but not with b=4 (+5)
    assignment = solve_allocation(sens, cost, budget, method=method)
    assert assignment == {'a': 2, 'b': 2, 'c': 1}
    assert allocation_summary(assignment, sens, cost) == (0.5, budget - 1)
    # one BOP more and b=4 fits
    assert solve_allocation(sens, cost, budget + 1, method=method)['b'] == 4


@pytest.mark.parametrize('method', ['milp', 'dp'])
def test_one_bop_over_a_large_slack_is_refused(method):
    # Both upgrades together overshoot a 2e12 budget by 1 BOP: a relative 5e-13,
    # inside HiGHS's feasibility tolerance, so the exact re-check must catch it.
    big = 10**12
    sens = {'a': {1: 1.0, 2: 0.0}, 'b': {1: 1.0, 2: 0.0}}
    cost = {'a': {1: 0, 2: big}, 'b': {1: 0, 2: big + 1}}
    assignment = solve_allocation(sens, cost, 2 * big, method=method)
    total, spent = allocation_summary(assignment, sens, cost)
    assert total == 1.0 and spent <= 2 * big


@pytest.mark.parametrize('method', ['milp', 'dp'])
def test_costs_beyond_int64(method):
    base = 2**70  # partial sums overflow int64: the DP must keep Python ints
    sens = {'a': {1: 2.0, 2: 1.0, 4: 0.0}, 'b': {1: 2.0, 2: 1.5, 4: 0.0}}
    cost = {'a': {1: base, 2: base + 1, 4: base + 3}, 'b': {1: base, 2: base + 1, 4: base + 2}}
    assignment = solve_allocation(sens, cost, 2 * base + 3, method=method)
    assert allocation_summary(assignment, sens, cost) == (1.0, 2 * base + 3)


@pytest.mark.parametrize('method', ['milp', 'dp'])
def test_larger_problem_milp_and_dp_agree(method):
    rng = random.Random(7)
    sens, cost = {}, {}
    for i in range(60):  # about the size of Swin-S (linear + softmax layers)
        c, s = rng.randint(10**9, 10**10), rng.uniform(0.1, 1.0)
        sens[f'l{i}'], cost[f'l{i}'] = {}, {}
        for g in CANDIDATES:
            sens[f'l{i}'][g], cost[f'l{i}'][g] = s, c
            c += rng.randint(10**6, 10**8)
            s *= rng.uniform(0.4, 0.95)
    budget = sum(c[8] for c in cost.values())
    brute_free = solve_allocation(sens, cost, budget, method='dp')
    assignment = solve_allocation(sens, cost, budget, method=method)
    total, spent = allocation_summary(assignment, sens, cost)
    assert spent <= budget
    assert abs(total - allocation_summary(brute_free, sens, cost)[0]) <= 1e-9
    # allocation is at least as good as the uniform G=8 it has the budget of
    assert total <= math.fsum(s[8] for s in sens.values())


@pytest.mark.parametrize('method', ['milp', 'dp'])
def test_infeasible_budget_names_budget_and_minimum(method):
    sens = {'a': {1: 1.0, 2: 0.5}, 'b': {1: 1.0}}
    cost = {'a': {1: 123_456, 2: 200_000}, 'b': {1: 1000}}
    with pytest.raises(ValueError, match=r'budget 124455 .*minimum achievable cost 124456'):
        solve_allocation(sens, cost, 124_455, method=method)


def test_infinite_sensitivity_is_a_forbidden_choice():
    sens = {'a': {1: math.inf, 2: 1.0, 4: 0.0}, 'b': {1: 0.0, 2: math.inf}}
    cost = {'a': {1: 1, 2: 5, 4: 9}, 'b': {1: 1, 2: 1}}
    for method in ('milp', 'dp'):
        assert solve_allocation(sens, cost, 10, method=method) == {'a': 4, 'b': 1}
        # cost 1 of a=1 does not count towards the minimum: it is forbidden
        with pytest.raises(ValueError, match='budget 5 .* minimum achievable cost 6'):
            solve_allocation(sens, cost, 5, method=method)
    with pytest.raises(ValueError, match="layer 'b'.*\\+inf"):
        solve_allocation({'b': {1: math.inf}}, {'b': {1: 1}}, 10)


def test_ties_are_deterministic_and_dp_prefers_cheapest():
    sens = {'a': {1: 1.0, 2: 0.0, 4: 0.0}, 'b': {1: 0.0, 2: 0.0}}
    cost = {'a': {1: 1, 2: 2, 4: 3}, 'b': {1: 1, 2: 2}}
    assert solve_allocation(sens, cost, 100, method='dp') == {'a': 2, 'b': 1}
    first = solve_allocation(sens, cost, 100, method='milp')
    assert allocation_summary(first, sens, cost)[0] == 0.0
    assert all(solve_allocation(sens, cost, 100, method='milp') == first for _ in range(3))


def test_single_layer_and_zero_slack():
    sens = {'a': {1: 1.0, 2: 0.5, 4: 0.25}}
    cost = {'a': {1: 10, 2: 20, 4: 30}}
    for method in ('milp', 'dp'):
        assert solve_allocation(sens, cost, 10, method=method) == {'a': 1}
        assert solve_allocation(sens, cost, 29, method=method) == {'a': 2}
        assert solve_allocation(sens, cost, 10**6, method=method) == {'a': 4}


def test_accepts_numpy_scalars():
    np = pytest.importorskip('numpy')
    sens = {'a': {np.int64(1): np.float32(1.0), 2: np.float64(0.5)}}
    cost = {'a': {np.int64(1): np.int64(10), 2: np.int32(20)}}
    assert solve_allocation(sens, cost, np.int64(20), method='dp') == {'a': 2}


@pytest.mark.parametrize('sens, cost, budget, match', [
    ({}, {}, 10, 'empty'),
    ({'a': {1: 1.0}}, {'b': {1: 1}}, 10, "missing from cost: \\['a'\\]"),
    ({'a': {1: 1.0, 2: 0.5}}, {'a': {1: 1, 4: 2}}, 10, "layer 'a': candidates differ"),
    ({'a': {}}, {'a': {}}, 10, 'no candidate'),
    ({'a': {1: math.nan}}, {'a': {1: 1}}, 10, 'got nan'),
    ({'a': {1: -math.inf}}, {'a': {1: 1}}, 10, 'got -inf'),
    ({'a': {0: 1.0}}, {'a': {0: 1}}, 10, 'got 0'),
    ({'a': {1: 1.0}}, {'a': {1: -1}}, 10, 'must be >= 0, got -1'),
    ({'a': {1: 1.0}}, {'a': {1: 1}}, 0, 'budget must be > 0 BOPs, got 0'),
    ({'a': {1: 1.0}}, {'a': {1: 1}}, -5, 'got -5'),
])
def test_invalid_input_raises_value_error(sens, cost, budget, match):
    with pytest.raises(ValueError, match=match):
        solve_allocation(sens, cost, budget, method='dp')


def test_invalid_types_and_method():
    ok_sens, ok_cost = {'a': {1: 1.0}}, {'a': {1: 1}}
    with pytest.raises(ValueError, match="method must be one of .*'greedy'"):
        solve_allocation(ok_sens, ok_cost, 10, method='greedy')
    with pytest.raises(TypeError, match='budget'):
        solve_allocation(ok_sens, ok_cost, 10.0)
    with pytest.raises(TypeError, match='exact BOPs'):
        solve_allocation(ok_sens, {'a': {1: 1.5}}, 10)


@pytest.mark.parametrize('module', [allocation_module, bops_module])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_search_imports_without_mm_packages():
    code = ('import sys, igq_plugin.search; '
            'bad = [m for m in ("mmengine", "mmdet", "mmseg", "scipy") if m in sys.modules]; '
            'sys.exit(str(bad) if bad else 0)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr

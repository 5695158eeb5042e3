"""Compare two sensitivity searches by what matters: the allocation's objective."""
from igq_plugin.search import allocate_groups


def assert_same_optimum(layers, fast, naive, g_avgs=(2, 4)):
    """The allocation from ``fast`` tables is optimal for ``naive`` ones, up to the
    tables' own difference.

    Two searches that sum in different orders give tables that differ slightly, and
    near-tied candidates may then swap: comparing the allocations would test the
    machine. Judged by the ``naive`` tables, the ``fast`` allocation must be within
    ``2 * sum_l max_G |fast - naive|`` of the ``naive`` optimum (each of the two sums
    moves by at most half that between the tables), under the same budget.
    """
    slack = 2 * sum(max(abs(fast[n][g] - v) for g, v in naive[n].items()) for n in naive)
    for g_avg in g_avgs:
        fast_result = allocate_groups(layers, fast, g_avg=g_avg)
        naive_result = allocate_groups(layers, naive, g_avg=g_avg)
        assert fast_result.budget == naive_result.budget
        assert fast_result.total_bops <= fast_result.budget
        objective = [sum(naive[n][g] for n, g in result.groups.items())
                     for result in (fast_result, naive_result)]
        assert objective[0] <= objective[1] + slack + 1e-7 * len(naive), (g_avg, objective,
                                                                          slack)

import pytest
import torch

from igq_plugin.grouping import assign_groups, fit_group_ranges
from igq_plugin.quant import instance_channel_ranges


def test_converges_on_known_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-1.0, 1.0], [-4.0, 3.0], [-0.2, 8.0], [-9.0, 9.0]])
    labels = torch.arange(4).repeat_interleave(50)
    pairs = centres[labels] + 0.05 * torch.randn(200, 2, generator=gen)
    fit = fit_group_ranges(pairs[:, 0], pairs[:, 1], 4)
    assert fit.converged and fit.iterations < 20
    # every true cluster maps to exactly one group and the groups recover the centres
    for k in range(4):
        assert fit.assignment[labels == k].unique().numel() == 1
    found = torch.stack([fit.lower, fit.upper], 1)
    for centre in centres:
        assert (found - centre).norm(dim=1).min() < 0.05
    # after convergence, reassigning gives the same groups
    again = assign_groups(pairs[:, 0], pairs[:, 1], fit.lower, fit.upper)
    assert torch.equal(again, fit.assignment)


def test_empty_groups_are_reseeded():
    lower = torch.zeros(10)
    upper = torch.tensor([1.0] * 9 + [100.0])
    fit = fit_group_ranges(lower, upper, 3)
    assert torch.bincount(fit.assignment, minlength=3).min() >= 1


def test_deterministic():
    x = torch.randn(300) - 2
    y = torch.randn(300) + 2
    a, b = fit_group_ranges(x, y, 8), fit_group_ranges(x, y, 8)
    assert torch.equal(a.lower, b.lower) and torch.equal(a.assignment, b.assignment)


def test_l1_distance_option():
    x = torch.tensor([0.0, -5.0])
    assert assign_groups(x, -x + 1, torch.tensor([0.0, -5.0]), torch.tensor([1.0, 6.0]),
                         'l1').tolist() == [0, 1]
    with pytest.raises(ValueError, match="distance='cos'"):
        fit_group_ranges(x, x, 1, distance='cos')


def test_bad_input():
    with pytest.raises(ValueError, match='no calibration statistics'):
        fit_group_ranges(torch.zeros(0), torch.zeros(0), 1)
    with pytest.raises(ValueError, match='NaN or Inf'):
        fit_group_ranges(torch.tensor([float('nan')]), torch.ones(1), 1)
    with pytest.raises(ValueError, match=r'groups=5 .* 1\.\.4'):
        fit_group_ranges(torch.zeros(4), torch.ones(4), 5)


def test_instance_ranges_shapes():
    x = torch.randn(6, 10, 4)
    lower, upper = instance_channel_ranges(x, -1, 2)
    assert lower.shape == (2, 4)
    assert torch.equal(upper[1], x[3:].amax(dim=(0, 1)))
    with pytest.raises(ValueError, match='num_instances=4'):
        instance_channel_ranges(x, -1, 4)

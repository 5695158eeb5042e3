"""Copy-free layout helpers and the blockwise assignment equal the straightforward ones."""
import pytest
import torch

from igq_plugin.grouping import assign_groups, range_distances
from igq_plugin.quant.layout import (instance_channel_ranges, instance_param_view,
                                     row_param_view, softmax_row_max, split_instances)

from ..reference import instance_view


def reference_ranges(x, channel_dim, num_instances):
    view = instance_view(x, channel_dim, num_instances)
    return torch.aminmax(view, dim=1 if channel_dim == -1 else 2)


INPUTS = {  # name: (tensor, channel_dim, num_instances)
    'tokens-last': (lambda: torch.randn(6, 10, 4), -1, 2),
    'windows-4d': (lambda: torch.randn(4, 3, 5, 8), -1, 2),
    'chunk-of-qkv': (lambda: torch.randn(4, 7, 3 * 8).chunk(3, dim=-1)[2], -1, 2),
    'permuted': (lambda: torch.randn(2, 8, 5, 6).permute(0, 2, 3, 1), -1, None),
    'rows-2d': (lambda: torch.randn(9, 8), -1, None),
    'large-blocked': (lambda: torch.randn(4, 700, 96), -1, 2),  # 1400 tokens: 43 blocks + 24
    'large-blocked-wide': (lambda: torch.randn(2, 700, 200), -1, None),  # 700 = 21 * 32 + 28
    'large-not-blocked': (lambda: torch.randn(2, 700, 384), -1, None),
    'large-few-tokens': (lambda: torch.randn(1, 10, 30001), -1, None),  # fewer than a block
    'large-permuted': (lambda: torch.randn(2, 96, 40, 40).permute(0, 2, 3, 1), -1, None),
    'channels-first': (lambda: torch.randn(3, 8, 5, 6), 1, None),
    'channels-last-memory': (lambda: torch.randn(3, 8, 5, 6).to(
        memory_format=torch.channels_last), 1, 3),
    'channels-first-1-token': (lambda: torch.randn(3, 8), 1, None),
}


@pytest.mark.parametrize('name', INPUTS)
def test_ranges_and_parameter_views_without_copies(name):
    make, channel_dim, num_instances = INPUTS[name]
    x = make()
    lower, upper = instance_channel_ranges(x, channel_dim, num_instances)
    ref_lower, ref_upper = reference_ranges(x, channel_dim, num_instances)
    assert torch.equal(lower, ref_lower) and torch.equal(upper, ref_upper)
    view, _ = split_instances(x, channel_dim, num_instances)
    assert view.data_ptr() == x.data_ptr() and view.numel() == x.numel()  # a view
    # per-[I, C] parameters broadcast against the view like against instance_view
    params = torch.randn(lower.shape)
    axis = 1 if channel_dim == -1 else 2
    ref = instance_view(x, channel_dim, num_instances) * params.unsqueeze(axis)
    out = view * instance_param_view(params, view, channel_dim)
    assert torch.equal(out.reshape(x.shape), ref.reshape(x.shape))


def test_layout_errors_name_the_values():
    with pytest.raises(ValueError, match='num_instances=4'):
        split_instances(torch.randn(6, 2, 3), -1, 4)
    with pytest.raises(ValueError, match='must equal the batch size'):
        split_instances(torch.randn(4, 3, 2, 2), 1, 2)
    with pytest.raises(ValueError, match='at least 2 dimensions'):
        split_instances(torch.randn(5), -1, None)


def test_softmax_row_helpers():
    attn = torch.softmax(torch.randn(2, 5, 3, 7), dim=-1).transpose(1, 2)  # non-contiguous
    upper = softmax_row_max(attn)
    assert torch.equal(upper, attn.reshape(-1, 7).amax(-1))
    params = torch.arange(upper.numel(), dtype=torch.float32)
    assert torch.equal((attn * row_param_view(params, attn)).reshape(-1, 7),
                       attn.reshape(-1, 7) * params[:, None])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_softmax_row_max_is_amax_for_any_values(dtype):
    attn = torch.softmax(torch.randn(40, 3, 9), dim=-1).to(dtype)
    assert torch.equal(softmax_row_max(attn), attn.reshape(-1, 9).amax(-1))
    nan = torch.tensor(float('nan'), dtype=dtype)
    cases = [(special, negative_row) for negative_row in (False, True)
             for special in (float('inf'), 0.0, -0.0, -1.0, nan, -nan, -float('inf'))]
    for special, negative_row in cases:
        x = attn.clone()
        x[3, 1, 4] = special
        if negative_row:
            x[5, 2] = -x[5, 2].abs() - 1
        expected = x.reshape(-1, 9).amax(-1)
        upper = softmax_row_max(x)
        assert torch.equal(upper.isnan(), expected.isnan())
        assert torch.equal(upper.nan_to_num(0.0, float('inf'), -float('inf')),
                           expected.nan_to_num(0.0, float('inf'), -float('inf')))


def reference_assign(lower, upper, group_lower, group_upper, distance):
    return range_distances(lower, upper, group_lower, group_upper, distance).argmin(dim=-1)


@pytest.mark.parametrize('distance', ['l2', 'l1'])
@pytest.mark.parametrize('groups', [2, 8, 16])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_blockwise_assignment_is_argmin(distance, groups, dtype):
    gen = torch.Generator().manual_seed(groups)
    items = (3, 12000)  # 36000 items: two blocks
    lower = -torch.rand(items, generator=gen, dtype=dtype) * 3
    upper = torch.rand(items, generator=gen, dtype=dtype) * 3
    centre_lower = -torch.rand(groups, generator=gen) * 3
    centre_upper = torch.rand(groups, generator=gen) * 3
    centre_lower[-1], centre_upper[-1] = centre_lower[0], centre_upper[0]  # a tie
    lower[0, :4] = torch.tensor([float('nan'), 0.0, -float('inf'), 1.0], dtype=dtype)
    upper[0, :4] = torch.tensor([1.0, float('inf'), float('inf'), float('nan')], dtype=dtype)
    lower[1, :200], upper[1, :200] = centre_lower[0], centre_upper[0]  # exactly on centre 0
    expected = reference_assign(lower, upper, centre_lower, centre_upper, distance)
    index = assign_groups(lower, upper, centre_lower, centre_upper, distance)
    assert index.shape == items and index.dtype == torch.long
    assert torch.equal(index, expected)
    # a NaN centre (a corrupt state): argmin picks it for every item; so do the blocks
    centre_upper[groups // 2] = float('nan')
    assert torch.equal(assign_groups(lower, upper, centre_lower, centre_upper, distance),
                       reference_assign(lower, upper, centre_lower, centre_upper, distance))


def test_half_precision_items_promote_like_the_table():
    lower = (-torch.rand(50000)).half()
    upper = torch.rand(50000).half()
    centre_lower, centre_upper = -torch.rand(4), torch.rand(4)
    assert torch.equal(assign_groups(lower, upper, centre_lower, centre_upper),
                       reference_assign(lower, upper, centre_lower, centre_upper, 'l2'))


def test_covering_assignment_picks_the_narrowest_group_that_does_not_clip():
    from igq_plugin.grouping import assign_covering, check_assignment
    group_lower = torch.tensor([-4.0, -1.0, -1.0, -2.0])
    group_upper = torch.tensor([4.0, 1.0, 1.0, 3.0])
    lower = torch.tensor([-0.5, -0.5, -1.5, -9.0, -1.0, float('nan')])
    upper = torch.tensor([0.5, 2.0, 2.9, 9.0, 3.5, 1.0])
    # inside [-1, 1] (first of two equal groups); [-2, 3]; [-2, 3]; only the widest
    # clips least; [-1, 3.5] clips 0.5 in [-2, 3] and 0 in [-4, 4]; NaN: narrowest
    assert assign_covering(lower, upper, group_lower, group_upper).tolist() == [1, 3, 3, 0, 0, 1]
    with pytest.raises(ValueError, match="allowed are \\('cover', 'nearest'\\)"):
        check_assignment('closest')


@pytest.mark.parametrize('groups', [2, 5, 16])
def test_covering_assignment_of_softmax_rows_equals_the_table(groups):
    from igq_plugin.grouping import assign_covering
    gen = torch.Generator().manual_seed(groups)
    group_upper = torch.rand(groups, generator=gen).round(decimals=1)  # ties on purpose
    row_max = torch.rand(50000, generator=gen)
    row_max[:3] = torch.tensor([float('nan'), 1.5, 0.0])
    zeros = torch.zeros_like(row_max)
    fast = assign_covering(zeros, row_max, torch.zeros(groups), group_upper)
    # the general path: give one item a tiny negative minimum so that it is taken
    shifted = zeros.clone()
    shifted[-1] = -1e-30
    table = assign_covering(shifted, row_max, torch.zeros(groups), group_upper)
    assert torch.equal(fast[:-1], table[:-1])

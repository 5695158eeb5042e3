"""Item layouts: channels of an instance vs softmax rows, one small object each."""
import pytest
import torch

from igq_plugin.quant import (ChannelLayout, SoftmaxRowLayout, build_layout, fake_quantize,
                              qparams_from_bounds)

from ..reference import instance_view


def test_build_layout_by_name_and_errors():
    assert build_layout('channel') == ChannelLayout(-1)
    assert build_layout('channel', 1) == ChannelLayout(channel_dim=1)
    assert build_layout('softmax') == SoftmaxRowLayout()
    with pytest.raises(ValueError, match=r"kind='rows' is not supported: allowed are"):
        build_layout('rows')
    with pytest.raises(ValueError, match='channel_dim=2 is not supported'):
        ChannelLayout(2)
    with pytest.raises(AttributeError):  # frozen: a layout is a value
        ChannelLayout().channel_dim = 1


@pytest.mark.parametrize('channel_dim,shape,instances', [(-1, (6, 5, 8), 2), (1, (3, 8, 4, 5), 3)])
def test_channel_ranges_and_fake_quantize_follow_the_instances(channel_dim, shape, instances):
    layout = ChannelLayout(channel_dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    lower, upper = layout.ranges(x, instances)
    view = instance_view(x, channel_dim, instances)  # [I, T, C] or [I, C, T]
    token_axis = 1 if channel_dim == -1 else 2
    assert torch.equal(lower, view.amin(token_axis)) and torch.equal(upper, view.amax(token_axis))
    scale, zero = qparams_from_bounds(lower, upper, 4)  # [I, C]
    out = layout.fake_quantize(x, scale, zero, 4, instances)
    params = [p.unsqueeze(token_axis) for p in (scale, zero)]
    expected = fake_quantize(view, *params, 4, integer_zero_point=True).reshape(x.shape)
    assert torch.equal(out, expected)  # element-wise: the same bits
    assert layout.per_channel(torch.arange(8.)).shape == ((8,) if channel_dim == -1 else (8, 1, 1))


def test_softmax_rows_have_zero_lower_bounds_and_no_identity():
    layout = SoftmaxRowLayout()
    attn = torch.softmax(torch.randn(2, 3, 4, 6), dim=-1)
    lower, upper = layout.ranges(attn, None)
    assert lower.shape == upper.shape == (24,) and not lower.any()
    assert torch.equal(upper, attn.amax(-1).reshape(-1))
    assert layout.ranges_or_upper_only(attn, None)[0] is None
    assert not layout.fixed_items and ChannelLayout().fixed_items
    assert layout.per_channel(torch.tensor([0.5])).dim() == 0

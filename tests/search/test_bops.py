"""Tests of the BOP cost model (igq_plugin/search/bops.py)."""
import pytest

from igq_plugin.search import DEFAULT_CANDIDATES, FLOAT_OP_BOPS, LayerCost, layer_bops
from igq_plugin.search.bops import reference_groups


def _linear(**kw):
    args = dict(name='blocks.0.mlp.fc1', kind='channel', macs=1000, w_bits=4, a_bits=4,
                num_instances=2, tokens=10, channels=8, out_elements=100)
    args.update(kw)
    return LayerCost(**args)


def _softmax(**kw):
    args = dict(name='blocks.0.attn.softmax', kind='softmax', macs=5000, w_bits=4, a_bits=4,
                num_instances=2, tokens=0, channels=24, out_elements=300, row_length=7)
    args.update(kw)
    return LayerCost(**args)


def test_default_float_op_bops():
    assert FLOAT_OP_BOPS == 32
    assert DEFAULT_CANDIDATES == (1, 2, 4, 8, 12, 16)


def test_channel_hand_computed():
    # T=10, C=8, I=2, O=100, G=4, f=32:
    # min/max 2*10*8*2=320; distances 4*8*4*2=256; argmin 8*4*2=64; sums 4*100=400.
    cost = _linear()
    assert layer_bops(cost, 4) == 1000 * 16 + 32 * (320 + 256 + 64 + 400)
    assert layer_bops(cost, 4, float_op_bops=1) == 16000 + 1040
    # a single group needs no run-time assignment: it costs what a static one does
    assert layer_bops(cost, 1, float_op_bops=1) == 16000 + 100


def test_static_single_group_pays_one_rescale():
    assert layer_bops(_linear(), 1, dynamic=False) == 16000 + 32 * 100
    assert layer_bops(_softmax(), 1, dynamic=False) == 5000 * 16 + 32 * 300
    # static groups pay the rescale and sum of their G partial results, nothing more
    assert layer_bops(_linear(), 2, dynamic=False) == 16000 + 32 * 2 * 100
    assert layer_bops(_linear(), 2, dynamic=False) < layer_bops(_linear(), 2)
    assert layer_bops(_softmax(), 3, dynamic=False) == layer_bops(_softmax(), 1)


def test_softmax_hand_computed():
    # R=24, L=7, O=300, G=3, f=32: row max 24*7=168; distance+argmin 4*24*3=288; rescale 300.
    cost = _softmax()
    assert layer_bops(cost, 3) == 5000 * 16 + 32 * (168 + 288 + 300)
    # tokens and num_instances do not enter the softmax overhead
    assert layer_bops(_softmax(tokens=99, num_instances=5), 3) == layer_bops(cost, 3)


@pytest.mark.parametrize('make', [_linear, _softmax])
@pytest.mark.parametrize('dynamic', [True, False])
def test_monotone_in_groups(make, dynamic):
    cost = make()
    values = [layer_bops(cost, g, dynamic=dynamic) for g in range(1, cost.channels + 1)]
    if dynamic or cost.kind == 'channel':
        assert all(a < b for a, b in zip(values, values[1:]))
    else:  # static softmax rows: one rescale per output whatever G
        assert len(set(values)) == 1


@pytest.mark.parametrize('groups', [0, -1, 9])
def test_groups_out_of_range(groups):
    with pytest.raises(ValueError, match=rf'groups must be in \[1, 8\].*got {groups}'):
        layer_bops(_linear(), groups)


def test_bad_arguments():
    with pytest.raises(TypeError):
        layer_bops(_linear(), 2.0)
    with pytest.raises(ValueError, match='float_op_bops'):
        layer_bops(_linear(), 2, float_op_bops=-1)
    with pytest.raises(ValueError, match="kind must be one of .*'conv'"):
        _linear(kind='conv')
    with pytest.raises(ValueError, match='w_bits must be >= 1, got 0'):
        _linear(w_bits=0)
    with pytest.raises(ValueError, match='channels must be >= 1, got 0'):
        _linear(channels=0)
    with pytest.raises(ValueError, match='row_length must be >= 1'):
        _softmax(row_length=0)
    with pytest.raises(TypeError):
        _linear(macs=1.5)


def test_exact_for_large_and_numpy_ints():
    np = pytest.importorskip('numpy')
    big = _linear(macs=np.int64(2**62), tokens=np.int64(2**40))
    assert type(big.macs) is int
    expected = 2**62 * 16 + 32 * (2 * 2**40 * 8 * 2 + 5 * 8 * 4 * 2 + 4 * 100)
    assert layer_bops(big, 4) == expected  # would overflow int64


@pytest.mark.parametrize('g_avg', [1, 4, 8, 12, 100])
def test_budget_groups_cap_channels_not_rows(g_avg):
    # the budget "every layer at G_avg": a channel layer cannot have more groups than
    # channels; softmax rows are counted at run time and are not capped
    assert reference_groups(_linear(channels=3), g_avg) == min(g_avg, 3)
    assert reference_groups(_linear(), g_avg) == min(g_avg, _linear().channels)
    assert reference_groups(_softmax(), g_avg) == g_avg

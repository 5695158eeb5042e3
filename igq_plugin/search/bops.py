"""Bit-operation (BOP) cost model for group-size allocation.

The paper counts BOPs "including the overhead" of instance-aware grouping but
does not give the formula; the formula below is the project's choice
(docs/method.md, section 5). All arithmetic is exact Python ``int``.

Notation (fields of :class:`LayerCost`): ``MACs`` multiply-accumulates of the
quantized op per forward, ``b_w``/``b_a`` its operand bit-widths, ``I`` number
of instances (images) per forward, ``T`` tokens reduced per instance for a
channel's min/max, ``C`` channels grouped, ``R`` softmax rows (items) per
forward, ``L`` keys per softmax row, ``O`` output elements of the op per
forward, ``G`` number of groups, ``f`` BOPs of one 32-bit float operation
(add, compare or multiply; ``f = FLOAT_OP_BOPS = 32`` by default)::

    BOP(G) = MACs * b_w * b_a + overhead(G)

    'channel' kind, dynamic (instance-aware) quantizer:
        overhead = f * (2*T*C*I      # per-instance min and max of every channel
                        + 4*C*G*I    # distance of every channel range to every group
                        + C*G*I      # argmin over the groups
                        + G*O)       # rescale and float sum of G partial results

    'softmax' kind (rows are the items; a row group splits no summation):
        overhead = f * (R*L          # max of every row
                        + 4*R*G      # distance and argmin
                        + O)         # one rescale per output element

    static quantizer (``dynamic=False``), or a single group (G == 1 needs no
    assignment, so it is static whatever the quantizer):
        'channel': overhead = f * G * O  # rescale and sum of G partial results
        'softmax': overhead = f * O      # one rescale per output element

Example:
    >>> cost = LayerCost(name='fc', kind='channel', macs=1000, w_bits=4,
    ...                  a_bits=4, num_instances=1, tokens=10, channels=8,
    ...                  out_elements=100)
    >>> layer_bops(cost, 2, float_op_bops=1)
    16440
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from ..quantizers import DEFAULT_CANDIDATES, KINDS

__all__ = [
    'DEFAULT_CANDIDATES',
    'FLOAT_OP_BOPS',
    'LayerCost',
    'layer_bops',
]

#: BOPs charged for one 32-bit float add, compare or multiply. [choice]
FLOAT_OP_BOPS = 32


# Smallest allowed value of each integer field of LayerCost.
_FIELD_MIN = {
    'macs': 0,
    'w_bits': 1,
    'a_bits': 1,
    'num_instances': 1,
    'tokens': 0,
    'channels': 1,
    'out_elements': 0,
    'row_length': 0,
}


def _check_int(name: str, value: object, minimum: float) -> int:
    """Return ``value`` as ``int`` after checking its type and lower bound.

    Args:
        name: Name used in the error message.
        value: Value to check; any integral number except ``bool``.
        minimum: Smallest allowed value (``-math.inf`` for no bound).

    Returns:
        ``int(value)``.

    Raises:
        TypeError: If ``value`` is not an integral number.
        ValueError: If ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f'{name} must be an int, got {value!r} ({type(value).__name__})')
    value = int(value)
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value}')
    return value


@dataclass(frozen=True)
class LayerCost:
    """Shape facts of one quantized op, enough to price it at any group count.

    For a Linear layer (``'channel'`` kind) the groups partition the ``C``
    input channels. For the softmax attention (``'softmax'`` kind) the quantized
    op is ``attn @ V``: ``w_bits`` is then the bit-width of ``V``, the groups
    partition the ``R`` attention rows and ``tokens`` is not used.

    Attributes:
        name: Layer name (module path), the key used by the allocation.
        kind: ``'channel'`` or ``'softmax'``.
        macs: Multiply-accumulates of the quantized op per forward, for the
            given input.
        w_bits: Bit-width of the weight (or second) operand, >= 1.
        a_bits: Bit-width of the activation operand, >= 1.
        num_instances: ``I``, instances (images) per forward, >= 1.
        tokens: ``T``, items reduced for a channel's min/max per instance
            (e.g. tokens per image), >= 0.
        channels: ``C``, channels grouped (``'channel'`` kind), or ``R``, rows
            per forward over all instances, heads and windows (``'softmax'``
            kind); >= 1. The number of groups is capped at this value.
        out_elements: ``O``, output elements of the op per forward, >= 0.
        row_length: ``L``, keys per softmax row; >= 1 for ``'softmax'``, not
            used for ``'channel'``.

    Raises:
        TypeError: If an integer field is not an ``int``.
        ValueError: If ``kind`` is unknown or a field is out of range.
    """

    name: str
    kind: str
    macs: int
    w_bits: int
    a_bits: int
    num_instances: int
    tokens: int
    channels: int
    out_elements: int
    row_length: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f'name must be a str, got {self.name!r}')
        if self.kind not in KINDS:
            raise ValueError(f'kind must be one of {KINDS}, got {self.kind!r}')
        for field in fields(self):
            if field.name in _FIELD_MIN:
                value = _check_int(f'LayerCost({self.name!r}).{field.name}',
                                   getattr(self, field.name), _FIELD_MIN[field.name])
                # Store a plain int (numpy integers would overflow in products).
                object.__setattr__(self, field.name, value)
        if self.kind == 'softmax' and self.row_length < 1:
            raise ValueError(f"LayerCost({self.name!r}).row_length must be >= 1 for kind "
                             f"'softmax', got {self.row_length}")


def layer_bops(cost: LayerCost, groups: int, float_op_bops: int = FLOAT_OP_BOPS,
               dynamic: bool = True) -> int:
    """BOPs of one layer quantized with ``groups`` group quantizers.

    See the module docstring for the formula.

    Args:
        cost: Shape facts of the layer.
        groups: ``G``, number of group quantizers, ``1 <= G <= cost.channels`` for
            channel layers, ``G >= 1`` for softmax layers.
        float_op_bops: BOPs of one 32-bit float operation, >= 0.
        dynamic: Whether channels (rows) are assigned to groups per instance at
            run time. A static quantizer (or any single group) needs no run-time
            statistics, only the rescale and sum of its G partial results.

    Returns:
        ``MACs * w_bits * a_bits`` plus the grouping overhead, as an exact int.

    Raises:
        TypeError: If ``groups`` or ``float_op_bops`` is not an int.
        ValueError: If ``groups`` is outside that range or
            ``float_op_bops`` is negative.
    """
    if not isinstance(cost, LayerCost):
        raise TypeError(f'cost must be a LayerCost, got {type(cost).__name__}')
    g = _check_int('groups', groups, -math.inf)
    # channels bound G; softmax rows are items of every instance, any G >= 1 is a table
    limit = cost.channels if cost.kind == 'channel' else math.inf
    if not 1 <= g <= limit:
        raise ValueError(f'groups must be in [1, {cost.channels}] (channels of layer '
                         f'{cost.name!r}), got {g}')
    f = _check_int('float_op_bops', float_op_bops, 0)
    compute = cost.macs * cost.w_bits * cost.a_bits
    out = cost.out_elements
    if g == 1 or not dynamic:
        return compute + f * (g * out if cost.kind == 'channel' else out)
    if cost.kind == 'channel':
        c, t, i = cost.channels, cost.tokens, cost.num_instances
        overhead = 2 * t * c * i + 4 * c * g * i + c * g * i + g * out
    else:  # 'softmax'
        r = cost.channels
        overhead = r * cost.row_length + 4 * r * g + out
    return compute + f * overhead


def reference_groups(cost: LayerCost, g_avg: int) -> int:
    """G of a layer in the budget "every layer at G_avg": capped at a channel layer's
    channel count (softmax rows are not capped)."""
    return min(g_avg, cost.channels) if cost.kind == 'channel' else g_avg

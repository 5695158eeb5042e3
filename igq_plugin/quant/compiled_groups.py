"""Compiled run-time group parameters of the IGQ quantizer (the ``'cover'`` rule).

At run time an :class:`~igq_plugin.quant.IGQQuantizer` reduces every item's range on
this instance, assigns each item to the narrowest group that covers it
(:func:`~igq_plugin.grouping.covering_positions`) and gathers that group's scale and zero
point. Eager, that is two passes over the activation (``amin``, then ``amax``) and a
few small kernels; here one compiled graph gives the per-item parameters and the
element-wise step of :mod:`.compiled` applies them, so the activation is read twice
in all (ranges, then the fake-quantization) and written once.

The graphs, per layout:

- tokens-last channels ``[I, T, C]``: the minimum and maximum over the tokens in one
  pass. Inductor reduces an outer axis column block by column block (a strided walk
  over all tokens per block of 16 channels, 3-4x slower than ``torch.amin`` here);
  written as an element-wise ``minimum``/``maximum`` over :data:`TOKEN_BLOCK` strided
  token slices, it is one contiguous, vectorised loop that yields both extremes of
  ``[I, T / b, C]``, and only that ``b``-times smaller tensor is reduced column-wise;
- channels-first ``[I, C, T]``: ``amin`` and ``amax`` over the contiguous last axis,
  fused into one loop;
- softmax rows ``[R, N]``: the row maximum; every group's lower bound is 0, so the
  position is ``#{g < widest: u_g < M}``, counted by comparisons unrolled over the
  padded table (a short reduction axis is many times slower in inductor's code).

Results are those of the eager path bit for bit: minima, maxima, comparisons and
``clamp``/``+``/``-`` are exact in IEEE arithmetic, ``argmin`` takes the first minimum
(NaN counts as the minimum, as in eager), and the gathered tables are the eager ones
(``tests/quant/test_compiled.py``).

Each function compiles dynamic (a new image size or window count reuses the graph).
Where a layout does not apply (too few tokens, a view that needs a copy, more groups
than :data:`MAX_ROW_GROUPS`) or compiling fails, :func:`cover_parameters` returns
``None`` and the caller runs the eager path.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .compiled import CompiledGraph

# Tokens per block of the tokens-last range reduction: the element-wise pass reads b
# token rows per output row and leaves [I, T / b, C] for the column-wise reduction.
TOKEN_BLOCK = 8
# Softmax groups the unrolled row count handles (the table is padded to this length).
MAX_ROW_GROUPS = 16


def _token_ranges(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum over the tokens of ``[I, T, C]`` (``T >= TOKEN_BLOCK``): ``[I, C]``."""
    count = tokens.shape[1]
    whole = count // TOKEN_BLOCK * TOKEN_BLOCK
    lower = upper = tokens[:, 0:whole:TOKEN_BLOCK]
    for offset in range(1, TOKEN_BLOCK):
        part = tokens[:, offset:whole:TOKEN_BLOCK]
        lower, upper = torch.minimum(lower, part), torch.maximum(upper, part)
    # the last block always has TOKEN_BLOCK tokens: it overlaps the blocks above when T
    # is a multiple of TOKEN_BLOCK (min and max do not mind), and is never empty
    tail = tokens[:, count - TOKEN_BLOCK:]
    return (torch.minimum(torch.amin(lower, dim=1), torch.amin(tail, dim=1)),
            torch.maximum(torch.amax(upper, dim=1), torch.amax(tail, dim=1)))


def _gather(position: torch.Tensor, scale: torch.Tensor, inverse: torch.Tensor,
            zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return scale[position], inverse[position], zero[position]


def _cover(lower: torch.Tensor, upper: torch.Tensor, sorted_lower: torch.Tensor,
           sorted_upper: torch.Tensor) -> torch.Tensor:
    """:func:`~igq_plugin.grouping.covering_positions`' rule: ``[*S]`` positions."""
    clipped = ((upper[..., None] - sorted_upper).clamp(min=0)
               + (sorted_lower - lower[..., None]).clamp(min=0))  # [*S, G]
    return torch.argmin(clipped, dim=-1)


# Contiguous and strided inputs (the Q, K and V thirds of a fused qkv output) get their
# own function, i.e. their own code object and graph cache, as in .compiled.
def _tokens_last(tokens, sorted_lower, sorted_upper, scale, inverse, zero):
    lower, upper = _token_ranges(tokens)  # [I, T, C] -> [I, C]
    return _gather(_cover(lower, upper, sorted_lower, sorted_upper), scale, inverse, zero)


def _tokens_last_strided(tokens, sorted_lower, sorted_upper, scale, inverse, zero):
    lower, upper = _token_ranges(tokens)
    return _gather(_cover(lower, upper, sorted_lower, sorted_upper), scale, inverse, zero)


def _channels_first(x, sorted_lower, sorted_upper, scale, inverse, zero):  # [I, C, T]
    lower, upper = torch.amin(x, dim=-1), torch.amax(x, dim=-1)
    return _gather(_cover(lower, upper, sorted_lower, sorted_upper), scale, inverse, zero)


def _rows(rows, thresholds, scale, inverse):  # [R, N]; thresholds [MAX_ROW_GROUPS]
    top = torch.amax(rows, dim=1)
    position = torch.zeros_like(top, dtype=torch.long)
    for g in range(thresholds.shape[0]):  # +inf padding never counts; NaN never does
        position = position + (top > thresholds[g]).long()
    return scale[position], inverse[position]


_GRAPHS = {fn.__name__: CompiledGraph(fn) for fn in (
    _tokens_last, _tokens_last_strided, _channels_first, _rows)}


def _merged(x: torch.Tensor, *shape: int) -> torch.Tensor | None:
    try:
        return x.view(*shape)
    except RuntimeError:  # axes that merge only with a copy: the eager path
        return None


class CoverTables(NamedTuple):
    """The groups' tables as the graphs take them, prepared once per active G.

    ``sorted_lower``, ``sorted_upper``, ``scale``, ``inverse`` (``1 / scale``, computed
    eagerly as the element-wise step's) are ``[G]`` in cover order; ``zero`` is ``[G]``
    for channels and 0-dim for softmax rows (every zero point 0); ``thresholds`` are
    the row counts' bounds ``u_g`` for ``g < widest``, padded with ``+inf`` to
    ``[MAX_ROW_GROUPS]`` (softmax rows only, else ``None``).
    """

    sorted_lower: torch.Tensor
    sorted_upper: torch.Tensor
    scale: torch.Tensor
    inverse: torch.Tensor
    zero: torch.Tensor
    thresholds: torch.Tensor | None


def prepare_cover(kind: str, sorted_lower: torch.Tensor, sorted_upper: torch.Tensor,
                  sorted_scale: torch.Tensor, sorted_zero: torch.Tensor) -> CoverTables | None:
    """:class:`CoverTables` of groups in cover order (``G >= 2``), or ``None`` where the
    graphs do not apply: softmax groups with a lower bound other than 0 or more than
    :data:`MAX_ROW_GROUPS` before the first widest one.

    Args:
        kind: ``'channel'`` or ``'softmax'``.
        sorted_lower, sorted_upper, sorted_scale: ``[G]`` in cover order.
        sorted_zero: ``[G]``, or 0-dim (shared by every group).
    """
    groups = sorted_upper.numel()
    inverse = torch.reciprocal(sorted_scale)
    if kind == 'channel':
        zero = sorted_zero.expand(groups).contiguous() if sorted_zero.dim() == 0 else sorted_zero
        return CoverTables(sorted_lower, sorted_upper, sorted_scale, inverse, zero, None)
    widest = int(torch.searchsorted(sorted_upper.contiguous(), sorted_upper[-1:]))
    if widest > MAX_ROW_GROUPS or sorted_zero.dim() or bool(sorted_lower.any()):
        return None
    thresholds = torch.full((MAX_ROW_GROUPS,), float('inf'), dtype=sorted_upper.dtype,
                            device=sorted_upper.device)
    thresholds[:widest] = sorted_upper[:widest]
    return CoverTables(sorted_lower, sorted_upper, sorted_scale, inverse, sorted_zero,
                       thresholds)


def cover_parameters(view: torch.Tensor, kind: str, channel_dim: int, tables: CoverTables
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Per-item scale, ``1 / scale`` and zero point under the ``'cover'`` rule, compiled.

    Args:
        view: for channels, :func:`~igq_plugin.grouping.layout.split_instances`' view
            ``[I, *tokens, C]`` (``channel_dim=-1``) or ``[I, C, *spatial]`` (``1``);
            for softmax rows, the map ``[..., N]``.
        kind: ``'channel'`` or ``'softmax'``.
        channel_dim: ``-1`` or ``1`` (channels only).
        tables: :func:`prepare_cover`'s tables of this quantizer's groups.

    Returns:
        ``(scale, inverse, zero)``, each ``[I, C]`` (channels) or ``[R]`` (rows; the
        zero point 0-dim, shared), equal to the eager gather from
        :func:`~igq_plugin.grouping.covering_positions`; or ``None`` where this layout has
        no compiled graph or compiling failed.
    """
    if kind == 'softmax':
        rows = _merged(view, -1, view.shape[-1])
        if rows is None or not rows.is_contiguous():
            return None
        params = _GRAPHS['_rows'](rows, tables.thresholds, tables.scale, tables.inverse)
        return None if params is None else (params[0], params[1], tables.zero)
    instances = view.shape[0]
    if channel_dim == -1:
        tokens = _merged(view, instances, -1, view.shape[-1])
        if tokens is None or tokens.shape[1] < TOKEN_BLOCK:
            return None
        name = '_tokens_last' if tokens.is_contiguous() else '_tokens_last_strided'
    else:
        tokens = _merged(view, instances, view.shape[1], -1)
        if tokens is None or not tokens.is_contiguous():
            return None
        name = '_channels_first'
    return _GRAPHS[name](tokens, tables.sorted_lower, tables.sorted_upper, tables.scale,
                         tables.inverse, tables.zero)

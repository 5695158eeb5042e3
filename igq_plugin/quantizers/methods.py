"""The activation-quantization methods by name (docs/method.md, sections 7 and 8).

``per-tensor``, ``repq`` (RepQ-ViT, the peer), ``static-group``, ``igq-fixed`` /
``igq`` (the same quantizer; ``igq`` also runs the group-size allocation),
``igq-reparam`` (``igq`` after RepQ-ViT's reparameterization of the post-LayerNorm
inputs: the fold takes the static per-channel spread, the groups the per-instance
part) and ``upper-bound`` (the ceiling of grouping, not deployable).
"""
from __future__ import annotations

from typing import Sequence

from .base import DEFAULT_CANDIDATES, ActivationQuantizer
from .baselines import PerTensorQuantizer, StaticGroupQuantizer, UpperBoundQuantizer
from .igq import IGQQuantizer
from .repq import RepQQuantizer

ACTIVATION_QUANTIZERS = {
    'per-tensor': PerTensorQuantizer,
    'repq': RepQQuantizer,
    'static-group': StaticGroupQuantizer,
    'igq-fixed': IGQQuantizer,
    'igq': IGQQuantizer,
    'igq-reparam': IGQQuantizer,
    'upper-bound': UpperBoundQuantizer,
}
METHODS = tuple(ACTIVATION_QUANTIZERS)
# Methods whose group sizes are allocated under the BOP budget (sensitivity search).
ALLOCATING_METHODS = ('igq', 'igq-reparam')
# Methods that fold the post-LayerNorm inputs' per-channel scales into the weights.
FOLDING_METHODS = ('repq', 'igq-reparam')


def check_method(method: str) -> str:
    """Validate an activation-quantization method name."""
    if method not in ACTIVATION_QUANTIZERS:
        raise ValueError(f'method={method!r} is not an activation quantizer: allowed are '
                         f'{METHODS}')
    return method


def build_activation_quantizer(method: str, bits: int, channels: int | None = None,
                               kind: str = 'channel', channel_dim: int = -1, groups: int = 8,
                               candidates: Sequence[int] = DEFAULT_CANDIDATES,
                               distance: str = 'l2', bounds: str = 'envelope',
                               assignment: str = 'cover', name: str = '',
                               post_norm: bool = False,
                               include_zero: bool = True) -> ActivationQuantizer:
    """Build the activation quantizer named ``method``.

    The grouping options are ignored by methods without groups. ``post_norm`` marks
    the input of a Linear that follows a LayerNorm: ``repq`` calibrates it per channel
    and folds it (:mod:`igq_plugin.nn.reparam`), ``igq-reparam`` folds its static
    per-channel spread before grouping; the other methods ignore it.
    ``include_zero=False`` (``repq`` only; the others ignore it) keeps RepQ-ViT's
    ranges as found (:class:`RepQQuantizer`).

    Example:
        >>> q = build_activation_quantizer('igq', 4, channels=16, groups=4)
        >>> q.candidates
        (1, 2, 4, 8, 12, 16)
    """
    cls = ACTIVATION_QUANTIZERS[check_method(method)]
    common = dict(channels=channels, kind=kind, channel_dim=channel_dim, name=name)
    return cls.build(method, bits, groups=groups, candidates=candidates, distance=distance,
                     bounds=bounds, assignment=assignment, post_norm=post_norm,
                     include_zero=include_zero, **common)

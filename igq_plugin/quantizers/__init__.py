"""Quantizer modules: the activation quantizers (IGQ and the baselines, RepQ-ViT's)
and the weight quantizer, with the methods by name.

Each is a thin ``nn.Module`` over the pure maths of :mod:`igq_plugin.quant` and
:mod:`igq_plugin.grouping`; it follows the mode switch (:func:`~igq_plugin.quant.quant_mode`).
"""
from .base import DEFAULT_CANDIDATES, GROUP_BOUNDS, KINDS, ActivationQuantizer, OpCost
from .baselines import (FixedRangeQuantizer, PerTensorQuantizer, StaticGroupQuantizer,
                        UpperBoundQuantizer)
from .igq import IGQQuantizer
from .methods import (ACTIVATION_QUANTIZERS, ALLOCATING_METHODS, FOLDING_METHODS, METHODS,
                      build_activation_quantizer, check_method)
from .repq import REPQ_PERCENTILES, LogSqrt2Quantizer, RepQQuantizer
from .weight import DEFAULT_PERCENTILES, WeightQuantizer, search_weight_qparams

__all__ = [
    'DEFAULT_CANDIDATES', 'GROUP_BOUNDS', 'KINDS', 'ActivationQuantizer', 'OpCost',
    'FixedRangeQuantizer', 'PerTensorQuantizer', 'StaticGroupQuantizer',
    'UpperBoundQuantizer', 'IGQQuantizer', 'ACTIVATION_QUANTIZERS', 'METHODS',
    'ALLOCATING_METHODS', 'FOLDING_METHODS',
    'build_activation_quantizer', 'check_method', 'REPQ_PERCENTILES', 'LogSqrt2Quantizer',
    'RepQQuantizer', 'DEFAULT_PERCENTILES', 'WeightQuantizer', 'search_weight_qparams'
]

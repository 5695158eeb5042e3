"""Group-size search: sensitivity tables, BOP cost model and the allocation solver.

Imports only torch/numpy (and scipy, lazily, for ``method='milp'``).
"""
from .allocate import AllocationResult, allocate_groups
from .allocation import ALLOCATION_METHODS, solve_allocation
from .bops import DEFAULT_CANDIDATES, FLOAT_OP_BOPS, LayerCost, layer_bops, reference_groups
from .model_costs import layer_cost, model_costs, total_bops
from .sensitivity import (FisherPredictor, SensitivityPredictor, apply_allocation,
                          kl_divergence, mean_kl, sensitivity_tables)
from .fisher import fisher_tables
from .fisher_estimates import (DEFAULT_FISHER_FULL_SAMPLES, DEFAULT_FISHER_SAMPLES,
                               DEFAULT_SENSITIVITY, FISHER_ESTIMATORS, SENSITIVITY_ESTIMATORS,
                               check_sensitivity,
                               diagonal_fisher, quadratic_kl, sampled_log_likelihood,
                               sampled_quadratic_kl, sampled_scores)

__all__ = [
    'AllocationResult', 'allocate_groups',
    'ALLOCATION_METHODS', 'DEFAULT_CANDIDATES', 'FLOAT_OP_BOPS', 'LayerCost',
    'layer_bops', 'reference_groups',
    'solve_allocation', 'layer_cost', 'model_costs', 'total_bops', 'apply_allocation',
    'kl_divergence', 'mean_kl', 'sensitivity_tables', 'SensitivityPredictor',
    'FisherPredictor', 'DEFAULT_FISHER_FULL_SAMPLES', 'DEFAULT_FISHER_SAMPLES',
    'DEFAULT_SENSITIVITY', 'FISHER_ESTIMATORS', 'SENSITIVITY_ESTIMATORS', 'check_sensitivity', 'diagonal_fisher',
    'fisher_tables', 'quadratic_kl', 'sampled_log_likelihood', 'sampled_quadratic_kl',
    'sampled_scores'
]

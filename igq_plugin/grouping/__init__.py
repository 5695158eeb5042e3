"""Instance-aware grouping: calibration of group ranges and run-time assignment."""
from .assign import (ASSIGNMENTS, DISTANCES, assign_covering, assign_groups,
                     check_assignment, check_distance, cover_order, covering_positions,
                     range_distances)
from .calibrate import GroupFit, check_groups, fit_group_ranges

__all__ = [
    'ASSIGNMENTS', 'DISTANCES', 'assign_covering', 'assign_groups', 'check_assignment',
    'check_distance', 'cover_order', 'covering_positions', 'range_distances', 'GroupFit',
    'check_groups', 'fit_group_ranges'
]

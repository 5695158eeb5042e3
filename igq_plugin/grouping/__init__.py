"""Instance-aware grouping: range statistics, assignment, calibration of group ranges."""
from .assign import (ASSIGNMENTS, DISTANCES, assign_covering, assign_groups,
                     check_assignment, check_distance, cover_order, covering_positions,
                     range_distances)
from .calibrate import GroupFit, check_groups, fit_group_ranges
from .layout import (CHANNEL_FIRST, CHANNEL_LAST, check_channel_dim, instance_channel_ranges,
                     instance_view)

__all__ = [
    'ASSIGNMENTS', 'DISTANCES', 'assign_covering', 'assign_groups', 'check_assignment',
    'check_distance', 'cover_order', 'covering_positions', 'range_distances', 'GroupFit',
    'check_groups', 'fit_group_ranges', 'CHANNEL_FIRST', 'CHANNEL_LAST',
    'check_channel_dim', 'instance_channel_ranges', 'instance_view'
]

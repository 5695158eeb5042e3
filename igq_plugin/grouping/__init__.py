"""Instance-aware grouping: range statistics, assignment, calibration of group ranges."""
from .assign import DISTANCES, assign_groups, check_distance, range_distances
from .calibrate import GroupFit, check_groups, fit_group_ranges
from .layout import (CHANNEL_FIRST, CHANNEL_LAST, check_channel_dim, expand_to_view,
                     instance_channel_ranges, instance_view, softmax_rows)

__all__ = [
    'DISTANCES', 'assign_groups', 'check_distance', 'range_distances', 'GroupFit',
    'check_groups', 'fit_group_ranges', 'CHANNEL_FIRST', 'CHANNEL_LAST',
    'check_channel_dim', 'expand_to_view', 'instance_channel_ranges', 'instance_view',
    'softmax_rows'
]

"""Reports: tables and plots of quantization results (no mm imports)."""
from .tables import format_table, layer_rows

__all__ = ['format_table', 'layer_rows']
# plots (matplotlib) are imported on demand: ``from igq_plugin.report.plots import ...``

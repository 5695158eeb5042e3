"""Reports: tables and plots of quantization results (no mm imports)."""
from .tables import format_table, layer_rows

__all__ = ['format_table', 'layer_rows']

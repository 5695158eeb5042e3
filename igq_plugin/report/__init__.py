"""Reports: tables (and, with matplotlib, plots) of quantization results."""
from .tables import format_table, layer_rows

__all__ = ['format_table', 'layer_rows']

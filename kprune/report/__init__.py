"""Parameters, non-zeros, MACs and widths; before/after comparisons.

- `summary(model)`: totals and one row per layer (nested models as
  `"outer/inner"`).
- `compare(before, after)`: before / after / ratio of every figure.
- `format_table(report)`: a terminal (or Markdown) table.
- `to_json(report, path=None)`: JSON text (and file).
- `plot_widths(before, after, path)`: PNG bar chart (needs matplotlib).
- `layer_macs`, `attention_macs`, `layer_width`: the per-layer counting
  rules.
"""

from kprune.ops.macs import attention_macs, layer_macs, layer_width
from kprune.report.compare import compare, format_table, to_json
from kprune.report.plot import plot_widths
from kprune.report.summary import summary

__all__ = [
    "compare",
    "format_table",
    "attention_macs",
    "layer_macs",
    "layer_width",
    "plot_widths",
    "summary",
    "to_json",
]

"""Multiply-accumulate counts of layer calls (moved to `kprune.ops.macs`).

The pure functions live in `kprune.ops.macs`, under the rebuilder that uses
them too; this module keeps their old import path.
"""

from kprune.ops.macs import attention_macs, layer_macs, layer_width  # noqa: F401

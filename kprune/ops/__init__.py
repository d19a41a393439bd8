"""kprune.ops."""

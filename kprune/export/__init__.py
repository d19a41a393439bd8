"""kprune.export."""

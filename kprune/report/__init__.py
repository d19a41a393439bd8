"""kprune.report."""

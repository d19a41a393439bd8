"""kprune.criteria."""

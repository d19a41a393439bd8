"""kprune.regularizers."""

"""kprune.callbacks."""

"""kprune.constraints."""

"""Test helpers shared by kprune's own tests and by users writing handlers."""

from kprune.testing.test_case import (
    TestCase,
    assert_same_outputs,
    run_serialization_test,
)

__all__ = ["TestCase", "assert_same_outputs", "run_serialization_test"]

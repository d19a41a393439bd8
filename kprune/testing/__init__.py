"""Test helpers shared by kprune's own tests and by users writing handlers."""

from kprune.testing.fresh_process import TWO_CPUS, InterruptAt, run_script
from kprune.testing.test_case import (
    TestCase,
    assert_same_outputs,
    run_serialization_test,
)

__all__ = [
    "TWO_CPUS",
    "InterruptAt",
    "TestCase",
    "assert_same_outputs",
    "run_script",
    "run_serialization_test",
]

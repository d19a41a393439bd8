"""Test helpers shared by kprune's own tests and by users writing handlers."""

from kprune.testing.test_case import TestCase
from kprune.testing.test_case import assert_same_outputs
from kprune.testing.test_case import run_serialization_test

__all__ = ["TestCase", "assert_same_outputs", "run_serialization_test"]

"""Argument checks shared by the pruning entry points."""


def as_number(value):
    """`float(value)`, or NaN when it is not a number (the caller's range
    check then fails with its own message)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")

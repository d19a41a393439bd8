"""Errors raised by the rebuilder. All subclass `ValueError`."""


class SurgeryError(ValueError):
    """Base class of the rebuilder's errors."""


class UnsupportedModelError(SurgeryError):
    """The model (or a nested model) has no graph kprune can read."""


class UnsupportedLayerError(SurgeryError):
    """A removal reaches a layer that has no handler for it."""


class CouplingError(SurgeryError):
    """A requested removal cannot be made without touching fixed channels."""

"""Callback order checks: what must run before `BackupAndRestore`.

`keras.callbacks.BackupAndRestore` saves the weights in its `on_epoch_end`.
Keras calls callbacks in list order, so a callback that changes the weights
in its own `on_epoch_end` (ProximalStep's proximal step) must come *before*
it: listed after it, the backup holds the weights from before the change,
and a resumed run continues from weights the uninterrupted run never had.
Rather than resume differently without a word, such a callback refuses that
order when `fit` starts (in `set_model`, before any training).

A callback cannot see the list it is in through Keras' API; the
`keras.callbacks.CallbackList` that calls `set_model` can: it is looked up
on the call stack (a few frames up). Where it is not found (a callback used
outside `fit`), nothing is checked.
"""

import sys

import keras


def sibling_callbacks(callback, max_depth=6):
    """The callbacks of the `CallbackList` now calling `callback`, or None.

    Args:
        callback: the callback whose hook is running.
        max_depth: how many frames up to look.

    Returns:
        The list of callbacks in call order, or `None`.

    Example:

    >>> sibling_callbacks(keras.callbacks.Callback()) is None
    True
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList):
            callbacks = list(getattr(owner, "callbacks", []))
            if any(c is callback for c in callbacks):
                return callbacks
        frame = frame.f_back
    return None


def require_before_backup(callback, reason):
    """Raise unless `callback` comes before every `BackupAndRestore`.

    Call from `set_model`. Does nothing when the callback list is not found.

    Args:
        callback: the calling callback.
        reason: what it changes at epoch end, for the message.

    Raises:
        ValueError: a `BackupAndRestore` is listed before `callback`.

    Example:

    >>> require_before_backup(keras.callbacks.Callback(), "the weights")
    """
    callbacks = sibling_callbacks(callback)
    if not callbacks:
        return
    names = [type(c).__name__ for c in callbacks]
    for position, other in enumerate(callbacks):
        if other is callback:
            return
        if isinstance(other, keras.callbacks.BackupAndRestore):
            mine = next(i for i, c in enumerate(callbacks) if c is callback)
            raise ValueError(
                f"{type(callback).__name__} must come before BackupAndRestore "
                f"in `callbacks`: it changes {reason} at the end of an epoch, "
                f"and BackupAndRestore (position {position}, before it) would "
                "back up the weights from before that change, so an "
                "interrupted run would resume differently. Move "
                f"{type(callback).__name__} (position {mine}) before it. "
                f"Received: callbacks={names}"
            )

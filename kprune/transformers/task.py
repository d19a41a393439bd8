"""Task models (classifiers, causal LMs) around a pruned backbone."""

import keras
import numpy as np


def is_task(model):
    """Whether `model` is a KerasHub task: a model holding a `.backbone`."""
    return isinstance(getattr(model, "backbone", None), keras.Model)


def rebuild_task(task, small, plan):
    """The task rebuilt around `small`, its own weights copied.

    The task is built with its own constructor (its config with the new
    backbone and the same preprocessor). Its weights outside the backbone
    (a classifier's head, a pooler) are copied; an axis whose size changed
    must be a hidden axis (original size `hidden_dim`, new size the pruned
    one) and keeps the plan's hidden channels.

    Args:
        task: the original task model (not modified).
        small: the pruned backbone.
        plan: the `TransformerPlan` that made `small`.

    Returns:
        A new task model of the same class.
    """
    config = task.get_config()
    config["backbone"] = small
    config["preprocessor"] = getattr(task, "preprocessor", None)
    new = type(task).from_config(config)
    old_inner = {id(v) for v in task.backbone.weights}
    new_inner = {id(v) for v in new.backbone.weights}
    old_own = {v.path: v for v in task.weights if id(v) not in old_inner}
    hidden_old = task.backbone.get_config().get("hidden_dim")
    hidden_new = small.get_config().get("hidden_dim")
    for variable in new.weights:
        if id(variable) in new_inner:
            continue
        source = old_own.get(variable.path)
        if source is None:
            raise ValueError(
                f"The rebuilt {type(new).__name__} has a weight {variable.path!r} "
                "the original task does not have. Received: task="
                f"{type(task).__name__}"
            )
        value = keras.ops.convert_to_numpy(source)
        for axis, (old, size) in enumerate(zip(value.shape, variable.shape)):
            if old == size:
                continue
            if plan.hidden is None or old != hidden_old or size != hidden_new:
                raise ValueError(
                    f"The task weight {variable.path!r} changes size on axis "
                    f"{axis} ({old} -> {size}) and that axis is not the hidden "
                    "size; kprune cannot slice it. Received: shape "
                    f"{tuple(value.shape)} -> {tuple(variable.shape)}"
                )
            value = np.take(value, plan.hidden, axis=axis)
        variable.assign(value)
    return new

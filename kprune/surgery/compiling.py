"""Clone a model without Keras re-compiling it, then compile the copy.

`keras.models.clone_model` ends by calling
`new_model.compile_from_config(model.get_compile_config())` when `model` is
compiled. That round trip through serialization fails for a loss or metric
Keras cannot deserialize (a `lambda`, a function not registered with
`keras.saving.register_keras_serializable`), so every kprune function that
clones a compiled model failed on such a model with an error about a loss.
These helpers let the clone skip compiling and compile it afterwards,
falling back to the original model's own loss and metric objects.
"""

import contextlib
import warnings

import keras


@contextlib.contextmanager
def not_compiled(model):
    """Within the block, `model.compiled` reads `False` (restored after).

    For `keras.models.clone_model`, whose last step re-compiles the copy from
    the model's serialized compile config. Nothing else of `model` changes.
    """
    compiled = getattr(model, "compiled", False)
    if compiled:
        model.compiled = False
    try:
        yield
    finally:
        if compiled:
            model.compiled = compiled


def clone_model(model, compile=True, **kwargs):
    """`keras.models.clone_model(model, **kwargs)`, then `compile_like`.

    Args:
        model: the model to clone (not modified).
        compile: compile the copy like `model` (`compile_like`); `False`
            returns it uncompiled.
        **kwargs: passed to `keras.models.clone_model`.
    """
    with not_compiled(model):
        new = keras.models.clone_model(model, **kwargs)
    if compile:
        compile_like(new, model)
    return new


def _fresh(obj):
    """A new, unbuilt copy of a Keras optimizer or metric object."""
    return obj.__class__.from_config(obj.get_config())


def _compile_from_config(new_model, config):
    """`new_model.compile_from_config(config)` without building the optimizer.

    Keras' `compile_from_config` creates the optimizer's slot variables at
    once (a loaded model restores them next); a rebuilt model starts with a
    fresh optimizer, whose variables `fit` creates on its first step. On a
    small ResNet that saved a fifth of a pruning call.
    """
    if type(new_model).compile_from_config is not keras.Model.compile_from_config:
        new_model.compile_from_config(config)  # the model's own override
        return
    if type(new_model).compile is not keras.Model.compile:
        new_model.compile_from_config(config)  # Keras warns and skips
        return
    new_model.compile(**keras.saving.deserialize_keras_object(config))


def compile_like(new_model, model):
    """Compile `new_model` the way `model` is compiled, if it is.

    First as Keras' `clone_model` does (`compile_from_config`, so the copy
    has its own optimizer and metrics). When that fails because a loss,
    metric or schedule cannot be deserialized, `new_model` is compiled with
    `model`'s own loss and metric-function objects and a fresh copy of its
    optimizer; when even that fails, it is left uncompiled with a warning.

    Args:
        new_model: the model to compile (e.g. a slimmed copy of `model`).
        model: the model whose compile settings to copy.

    Returns:
        Whether `new_model` is compiled.
    """
    if not getattr(model, "compiled", False):
        return False
    try:
        _compile_from_config(new_model, model.get_compile_config())
        return True
    except Exception as error:  # a custom loss / metric Keras cannot rebuild
        first = error
    try:
        config = dict(model._compile_config.config)
        fresh = (keras.optimizers.Optimizer, keras.metrics.Metric)
        for key in ("optimizer", "metrics", "weighted_metrics"):
            if config.get(key) is not None:
                config[key] = keras.tree.map_structure(
                    lambda x: _fresh(x) if isinstance(x, fresh) else x, config[key]
                )
        new_model.compile(**config)
        return True
    except Exception as error:
        warnings.warn(
            f"The new model of `{model.name}` is not compiled: its compile "
            f"settings could not be copied ({type(first).__name__}: {first}; "
            f"then {type(error).__name__}: {error}). Compile it before "
            "`fit` / `evaluate`.",
            stacklevel=3,
        )
        return False

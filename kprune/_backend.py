"""Backend differences that training-time callbacks must respect.

Keras 3 trains on TensorFlow, JAX or PyTorch. Two differences matter to a
callback that changes variables during `fit`:

- **Where the weights live during an epoch.** TensorFlow and PyTorch update
  the model's variables in place. JAX keeps the training state (weights,
  optimizer slots) outside the variables during an epoch and writes it back
  at the epoch's end. A callback that reads or assigns model weights in the
  middle of an epoch must first call `sync_weights(model)`; after it, the
  next train step reads the variables again, so assignments take effect.
  (Keras' `Callback.model` property already syncs on JAX, on every access;
  so a batch hook should not touch `self.model` on batches where it does
  nothing, or every step pays a full state sync. Read what it needs, such
  as `steps_per_execution` or the step counter, at `on_epoch_begin`.)
- **Variables that are not the model's.** A regularizer's strength or a
  constraint's mask is read at run time by TensorFlow's and PyTorch's train
  step, but JAX's compiled step bakes its value in when it traces. After
  assigning such a variable, call `retrace(model)` (a no-op on TensorFlow and
  PyTorch): the next step recompiles with the new value.
"""

import keras


def bakes_variables():
    """Whether the compiled train step freezes non-model variables at trace time.

    True on the JAX backend, False on TensorFlow and PyTorch.

    Returns:
        A bool.

    Example:

    >>> isinstance(bakes_variables(), bool)
    True
    """
    return keras.backend.backend() == "jax"


def sync_weights(model):
    """Write the in-flight training state back into the model's variables.

    A no-op outside a JAX `fit` (and on other backends). After it, reading
    `layer.kernel` gives the current weights, and assigning it changes what
    the next train step uses.

    Args:
        model: the `keras.Model` being trained.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> sync_weights(model)
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def retrace(model):
    """Recompile the train step where it has frozen non-model variables.

    Call after assigning a variable that the train step reads but the model
    does not own (regularizer strengths, constraint masks). A no-op unless
    `bakes_variables()`.

    Args:
        model: the `keras.Model` being trained.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> retrace(model)
    """
    if bakes_variables() and getattr(model, "compiled", False):
        model.make_train_function(force=True)


def applying_optimizer():
    """The Keras optimizer whose `apply` is running now, or `None`.

    Keras 3 optimizers run `apply` (gradient updates, then
    `variable.assign(variable.constraint(variable))` for every constrained
    variable) inside `keras.name_scope(optimizer.name, caller=optimizer)`,
    in the compiled train step on every backend and, under
    `tf.distribute`, on every replica's thread. A constraint called there
    finds the optimizer applying it as the innermost name scope whose
    caller is an optimizer (for a `LossScaleOptimizer`, its inner
    optimizer, which holds the learning rate). The name-scope stack is a
    Keras internal (`keras.src.backend.common.global_state`); kprune's
    tests check this lookup on TensorFlow, JAX and under
    `MirroredStrategy`.

    Returns:
        A `keras.optimizers.Optimizer`, or `None` outside `apply`.

    Example:

    >>> applying_optimizer() is None
    True
    """
    scope = _applying_scope()
    return None if scope is None else scope.caller


def _applying_scope():
    """The innermost name scope whose caller is an optimizer, or `None`."""
    from keras.src.backend.common import global_state
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    stack = global_state.get_global_attribute("name_scope_stack") or []
    for scope in reversed(stack):
        if isinstance(getattr(scope, "caller", None), BaseOptimizer):
            return scope
    return None


def applying_learning_rate(dtype):
    """The learning rate of the optimizer whose `apply` is running, once per step.

    `optimizer.learning_rate` evaluates a schedule (a cosine decay is ten
    ops) each time it is read. Every constrained variable needs it, so the
    value is kept on the `apply` call's own name scope (made anew by each
    `apply`, per replica thread) and read once per step and dtype.

    Args:
        dtype: the dtype to cast the learning rate to.

    Returns:
        A scalar tensor, or `None` outside `apply`.

    Example:

    >>> applying_learning_rate("float32") is None
    True
    """
    scope = _applying_scope()
    if scope is None:
        return None
    cache = scope.__dict__.setdefault("_kprune_learning_rate", {})
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype not in cache:
        cache[dtype] = keras.ops.cast(scope.caller.learning_rate, dtype)
    return cache[dtype]


def scale_loss_for_distribution(value):
    """A per-replica loss term scaled as Keras scales its own losses.

    Under a `tf.distribute` strategy with `R` replicas, Keras' TensorFlow
    trainer sums the replicas' gradients, so every loss it computes (the
    compiled losses, regularization and `add_loss` losses) is this
    replica's batch mean times `1 / R`, and the logged loss is multiplied
    back by `R`. A model that adds a loss term of its own in
    `compute_loss` must scale it the same way, or that term trains `R`
    times harder than on one device. `value / R` inside a replica context
    of a strategy with `R > 1` replicas; `value` everywhere else (one
    device, JAX, PyTorch: their losses are means over the global batch).
    This is Keras' own rule (`keras.src.losses.loss.
    scale_loss_for_distribution`, a Keras internal).

    Args:
        value: a scalar loss tensor (this replica's batch mean).

    Returns:
        The scaled scalar.

    Example:

    >>> float(scale_loss_for_distribution(keras.ops.convert_to_tensor(2.0)))
    2.0
    """
    from keras.src.losses.loss import scale_loss_for_distribution as keras_scale

    return keras_scale(value)

"""Mean gradients of the loss over a data set, on any Keras backend."""

import keras
import numpy as np

from kprune.criteria._autodiff import first_array, summed_gradients
from kprune.criteria.ablation import _as_list


def _default_loss(model, y):
    if getattr(model, "compiled", False) and getattr(model, "loss", None):
        return model.loss
    y = np.asarray(y)
    output = model.outputs[0] if getattr(model, "outputs", None) else None
    from_logits = True
    last = model.layers[-1] if model.layers else None
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if activation == "softmax" or type(last).__name__ == "Softmax":
        from_logits = False
    if y.ndim == 1 or (y.ndim == 2 and y.shape[-1] == 1):
        if np.issubdtype(y.dtype, np.integer):
            return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    if output is not None and y.ndim == len(output.shape) and y.shape[-1] > 1:
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    return keras.losses.MeanSquaredError()


def gradient_means(model, x, y, loss=None, batch_size=128, training=False):
    """Mean over batches of the gradient of the loss w.r.t. every weight.

    `g = (1 / B) sum_b dL_b / dw` over the `B` batches of `(x, y)`. The
    model is called with `training=training`:

    - `False` (default): inference mode, the function the model computes
      when deployed (BatchNormalization on its moving statistics, dropout
      off): the gradient of the loss of the model that is being pruned.
      With BatchNormalization on batch statistics instead, the loss does not
      change when a filter feeding it is scaled, so `sum_i w_i dL/dw_i = 0`
      over every such filter and first-order (Taylor) scores of those
      filters lose part of the information they carry.
    - `True`: as Keras' `fit` computes gradients (BatchNormalization on
      batch statistics, dropout active); the moving statistics the pass
      updates are restored afterwards.

    `L_b` is the task's loss: the model's own regularization losses
    (`model.losses`) are not added. The model is not copied, compiled or
    changed: each backend's own autodiff runs on it (TensorFlow: a
    `tf.function` around a `GradientTape`; JAX: `jax.jit(jax.grad(...))` of
    `stateless_call`; PyTorch: `torch.autograd.grad`), and every
    non-trainable variable is restored afterwards.

    Args:
        model: a `keras.Model`.
        x: inputs.
        y: targets.
        loss: a Keras loss (default: the model's compiled loss, else sparse
            categorical cross-entropy for integer labels, categorical for
            one-hot targets, mean squared error otherwise; logits unless the
            last layer is a softmax).
        batch_size: samples per batch.
        training: the mode the model is called in (see above).

    Returns:
        A dict `id(layer) -> {weight name: NumPy gradient}` over the model's
        leaf layers with trainable weights.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> grads = gradient_means(model, np.ones((4, 3)), np.zeros(4, "int32"))
    >>> grads[id(model.layers[0])]["kernel"].shape
    (3, 2)

    Reference:
        P. Molchanov et al., "Importance Estimation for Neural Network
        Pruning", CVPR 2019.
    """
    if training not in (True, False):
        raise ValueError(
            "`training` is the mode the model is called in for its gradients: "
            "False (inference: moving BatchNorm statistics, no dropout) or "
            f"True (as in fit). Received: training={training!r}"
        )
    loss = loss if loss is not None else _default_loss(model, y)
    if isinstance(x, dict):
        x_in = x
    else:
        x_in = _as_list(x)
        x_in = x_in[0] if len(x_in) == 1 else x_in
    frozen = [(v, keras.ops.convert_to_numpy(v)) for v in model.non_trainable_variables]
    try:
        sums = summed_gradients(model, x_in, y, loss, batch_size, training)
    finally:
        for variable, value in frozen:
            variable.assign(value)
    steps = int(np.ceil(len(np.asarray(first_array(x_in))) / batch_size))
    by_variable = {
        id(v): total / max(steps, 1)
        for v, total in zip(model.trainable_variables, sums)
    }
    originals = {}
    _pair_layers(model, model, originals)
    out = {}
    for layer, _ in originals.values():
        grads = {}
        for weight in layer.trainable_weights:
            if id(weight) in by_variable:
                grads[weight.name] = by_variable[id(weight)]
        if grads:
            out[id(layer)] = grads
    return out


def _pair_layers(model, copy, found):
    for layer, twin in zip(model.layers, copy.layers):
        if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
            _pair_layers(layer, twin, found)
        else:
            found[id(layer)] = (layer, twin)
            # Sublayers of composite layers (a KerasHub block's Dense layers)
            # are scored on their own: pair them in their tracking order.
            inner = list(layer._flatten_layers(include_self=False))
            inner_twin = list(twin._flatten_layers(include_self=False))
            if len(inner) == len(inner_twin):
                for sub, sub_twin in zip(inner, inner_twin):
                    if type(sub) is type(sub_twin):
                        found.setdefault(id(sub), (sub, sub_twin))

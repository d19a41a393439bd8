"""Mean gradients of the loss over a data set, on any Keras backend."""

import keras
import numpy as np

from kprune.criteria.ablation import _as_list


class _GradientSum(keras.optimizers.Optimizer):
    """An optimizer that adds each gradient to a slot instead of stepping.

    Running `fit` with it computes the sum of the per-batch gradients of
    the loss with each backend's own machinery (TensorFlow, JAX, PyTorch),
    and leaves the weights unchanged.
    """

    def __init__(self):
        super().__init__(learning_rate=0.0, name="kprune_gradient_sum")
        self.sums = []

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.sums = [
            self.add_variable_from_reference(v, name="gradient_sum") for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        self.assign_add(self.sums[index], gradient)


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


def gradient_means(model, x, y, loss=None, batch_size=128):
    """Mean over batches of the gradient of the loss w.r.t. every weight.

    `g = (1 / B) sum_b dL_b / dw`, computed on a copy of the model (the
    model itself is neither compiled nor changed) as Keras' `fit` computes
    gradients: layers in training mode (dropout active, BatchNorm on batch
    statistics).

    Args:
        model: a `keras.Model`.
        x: inputs.
        y: targets.
        loss: a Keras loss (default: the model's compiled loss, else sparse
            categorical cross-entropy for integer labels, categorical for
            one-hot targets, mean squared error otherwise; logits unless the
            last layer is a softmax).
        batch_size: samples per batch.

    Returns:
        A dict `id(layer) -> {weight name: NumPy gradient}` over the model's
        leaf layers with trainable weights.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> grads = gradient_means(model, np.ones((4, 3)), np.zeros(4, "int32"))
    >>> grads[id(model.layers[0])]["kernel"].shape
    (3, 2)
    """
    from kprune.surgery.compiling import clone_model

    loss = loss if loss is not None else _default_loss(model, y)
    copy = clone_model(model, compile=False)
    copy.set_weights(model.get_weights())
    optimizer = _GradientSum()
    copy.compile(optimizer=optimizer, loss=loss)
    x_in = _as_list(x)
    x_in = x_in[0] if len(x_in) == 1 else x_in
    steps = int(np.ceil(len(np.asarray(_as_list(x)[0])) / batch_size))
    copy.fit(x_in, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    by_variable = {
        id(v): keras.ops.convert_to_numpy(s) / max(steps, 1)
        for v, s in zip(optimizer._trainable_variables, optimizer.sums)
    }
    originals = {}
    _pair_layers(model, copy, originals)
    out = {}
    for layer, twin in originals.values():
        grads = {}
        for weight in twin.trainable_weights:
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

"""Which layer calls are traced, and the cached, verified trace of one call."""

import keras

from kprune.surgery.handlers import OPAQUE, get_handler
from kprune.surgery.tracing.trace import TraceError, trace_layer
from kprune.surgery.tracing.verify import verify_trace


def should_trace(layer):
    """Whether `layer` is a candidate for tracing, with the reason if not.

    Layers with a kprune handler are not traced (the handler knows them);
    `Lambda` layers are never traced (their function is the user's own
    code, which no smaller copy can be made of); ops, input layers and
    models are not layers to trace.

    Returns:
        `(bool, reason)`.
    """
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model):
        return False, "it is not a layer"
    if isinstance(layer, keras.layers.InputLayer):
        return False, "it is an input layer"
    if isinstance(layer, keras.layers.Lambda):
        return False, (
            "Lambda layers are never traced (no smaller copy of a Lambda's "
            "function can be made: write it as Keras layers or keras.ops "
            "calls in the model to make these channels prunable)"
        )
    if get_handler(layer) is not OPAQUE:
        return False, "it has a handler"
    if not layer.built:
        return False, "it is not built"
    return True, None


def trace_for(layer, path, inputs, arguments, opaque):
    """The verified `Trace` of one call, or None (reason put in `opaque`).

    Args:
        layer: the called layer.
        path: its path in the graph (for `opaque`).
        inputs: the call's input `TensorInfo`s.
        arguments: the call's `(args, kwargs)` with `Slot`s, or None.
        opaque: dict path -> reason, filled for layers that stay opaque.
    """
    ok, reason = should_trace(layer)
    if not ok:
        if reason not in ("it has a handler", "it is not a layer"):
            opaque[path] = reason
        return None
    try:
        trace = trace_layer(
            layer, inputs, arguments, check=lambda t: verify_trace(t, inputs, arguments)
        )
    except TraceError as error:
        opaque[path] = f"tracing it failed: {error}"
        return None
    return trace


def trace_any(layer, path, inputs, arguments, opaque):
    """The unverified `Trace` of any layer call with sublayers, or None.

    For counting (MACs inside layers), not for rebuilding: handlers do not
    stop it and the trace is not checked numerically. Models, `Lambda`
    layers and layers without sublayers are not traced.
    """
    if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.Model):
        return None
    if isinstance(layer, (keras.layers.InputLayer, keras.layers.Lambda)):
        return None
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return None  # counted whole by `kprune.report.attention_macs`
    if not layer.built or not list(layer._flatten_layers(include_self=False)):
        return None
    try:
        return trace_layer(layer, inputs, arguments)
    except TraceError as error:
        opaque[path] = f"tracing it failed: {error}"
        return None

"""Seeing inside layers: trace a layer's own `call` into sublayers and ops.

A composite layer (a KerasHub `TransformerEncoder`, an `MBConvBlock`, a
user's own block) is a `keras.layers.Layer` whose `call` is written with
sublayers and `keras.ops`. Calling that `call` on fresh symbolic inputs
records every sublayer call and every op as a node of a new graph, with the
layer's own sublayer objects in it (so weights and configs are the
originals). `kprune.surgery.Graph(model, expand=True)` inlines such traces
in place of the layer's node, so that the channel analysis sees the Dense,
attention and convolution layers inside and can couple, find and remove
their units. The trace is only ever read: the smaller model is rebuilt from
the layers' own classes (see `kprune.surgery.composite`).

- `trace_for(layer, path, inputs, arguments, opaque)`: the `Trace` of one
  call, or None when the layer has a handler, is not traceable, or its
  trace does not reproduce the layer (the reason goes into `opaque`).
- `trace_layer(...)`: the tracing itself; `verify_trace(...)`: the check.
- `find_heads(...)` (`tracing.heads`, with the axis rules of
  `tracing.axes`): the attention heads of a traced call.
"""

from kprune.surgery.tracing.policy import should_trace, trace_any, trace_for
from kprune.surgery.tracing.trace import Trace, TraceError, trace_layer
from kprune.surgery.tracing.verify import verify_trace

__all__ = [
    "Trace",
    "TraceError",
    "should_trace",
    "trace_any",
    "trace_for",
    "trace_layer",
    "verify_trace",
]

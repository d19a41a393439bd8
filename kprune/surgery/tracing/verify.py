"""Check that a trace computes what its layer computes."""

import keras
import numpy as np

from kprune.surgery.tracing.trace import TraceError, call_kwargs, standin_shape


def sample_values(shapes, dtypes, seed=0):
    """Random inputs: normal floats; ones for ints and bools (ids, masks)."""
    rng = np.random.default_rng(seed)
    values = []
    for shape, dtype in zip(shapes, dtypes):
        shape = standin_shape(shape)
        if "float" in str(dtype):
            values.append(rng.normal(size=shape).astype(str(dtype)))
        elif "bool" in str(dtype):
            values.append(np.ones(shape, dtype=bool))
        else:
            values.append(np.ones(shape, dtype=str(dtype)))
    return values


def _flat_numpy(outputs):
    return [
        None if o is None else keras.ops.convert_to_numpy(o)
        for o in keras.tree.flatten(outputs)
    ]


def verify_trace(trace, inputs, arguments, rtol=1e-5):
    """Raise `TraceError` unless the trace reproduces the layer's outputs.

    Both are run on the same random inputs (in inference mode); outputs must
    agree to `rtol` relative to their scale. The layer's non-trainable
    variables are put back afterwards: a layer that does not take
    `training` may still update state when run (DeepLabV3's pyramid pooling
    updated its BatchNorm statistics), and a check never changes the model.

    Args:
        trace: a `Trace` of `trace.layer`.
        inputs: the call's input `TensorInfo`s.
        arguments: the call's `(args, kwargs)` with `Slot`s (or None).
        rtol: tolerance relative to `max(1, max|output|)`.
    """
    from kprune.surgery.graph import NodeInfo

    values = sample_values(trace.shapes, [t.dtype for t in inputs])
    node = NodeInfo(trace.layer, "", list(inputs), [], arguments)
    args, kwargs = node.call_arguments(values)
    kwargs = call_kwargs(trace.layer, kwargs)
    if "training" in kwargs:
        kwargs["training"] = False
    state = [
        (v, keras.ops.convert_to_numpy(v)) for v in trace.layer.non_trainable_variables
    ]
    try:
        expected = _flat_numpy(trace.layer(*args, **kwargs))
        got = _flat_numpy(trace.function([values[i] for i in trace.input_slots]))
    except Exception as error:  # noqa: BLE001
        raise TraceError(
            f"running its trace failed ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:160]})"
        ) from None
    finally:
        for variable, value in state:
            variable.assign(value)
    if len(expected) != trace.output_count or any(
        expected[i] is None for i in trace.output_positions
    ):
        raise TraceError(
            "its outputs at random inputs are not those it gave when traced "
            f"({len(expected)} values, {trace.output_count} when traced)"
        )
    expected = [expected[i] for i in trace.output_positions]
    if len(expected) != len(got):
        raise TraceError(f"its trace has {len(got)} outputs, the layer {len(expected)}")
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            raise TraceError(f"its trace gives shape {b.shape}, the layer {a.shape}")
        if a.dtype.kind not in "fc":
            if not np.array_equal(a, b):
                raise TraceError("its trace gives different outputs")
            continue
        scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if not diff <= rtol * scale:
            raise TraceError(
                f"its trace differs from the layer by {diff:.3g} "
                f"(output scale {scale:.3g})"
            )

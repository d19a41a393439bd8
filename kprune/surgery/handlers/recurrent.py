"""Recurrent layers: `SimpleRNN`, `LSTM`, `GRU` (and `RNN` of their cells).

A recurrent layer with `u` units and `G` gate blocks (1 for SimpleRNN, 4 for
LSTM: i, f, c, o; 3 for GRU: z, r, h) computes, at every step,

    gates = x_t W + h_{t-1} U + b        W: (C_in, G*u), U: (u, G*u)

with the columns of unit `j` at `g*u + j` in every gate block. A unit is
its gate columns in `W`, `U` and `b`, its row of `U`, and its channel in
every output (the sequence or last output, and each returned state): they
leave together, under the plan key of the layer's path.

- A unit is dead when nothing downstream reads it *and* no kept unit reads
  it through the recurrent kernel (`U[j, g*u + k] = 0` for every gate `g`
  and kept unit `k`). The recurrent kernel is declared as a `Use` whose
  source and target are the layer's own units; a unit reading only itself
  (`U[j, g*u + j]`) does not keep itself alive.
- A unit is a constant zero when its candidate columns (SimpleRNN: its
  only gate; LSTM: the cell gate `c`; GRU: the candidate `h`) are zero in
  `W` (but for inputs that are constantly zero), in `b`, and in the rows of
  `U` of units that are not themselves zero, and the cell's activation maps
  0 to 0 (tanh, relu): its candidate is always 0, so from a zero initial
  state its output and states stay 0 (`c_t = f c_{t-1} + i * 0`, `h_t =
  z h_{t-1} + (1 - z) * 0`). Such a unit folds away like any zero channel.
  With an initial state given, or other gates non-zero, recurrent units are
  not constants (their state evolves over time).
- A constant input channel folds exactly into the bias: `x_c W[c]` is added
  to the input part of every step (GRU with `reset_after=True` keeps the
  input bias in row 0 of its `(2, 3u)` bias).

Stateful layers (per-batch state variables) and layers with custom cells are
pinned with a reason.
"""

import keras
import numpy as np

from kprune.surgery.handlers.base import LayerHandler, Use

_GATES = {"SimpleRNNCell": 1, "LSTMCell": 4, "GRUCell": 3}


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable.value)


def cell_of(layer):
    """The recurrent cell of a built-in recurrent layer, or None."""
    cell = getattr(layer, "cell", None)
    if type(cell).__name__ in _GATES and type(cell).__module__.startswith("keras."):
        return cell
    return None


def layer_refusal(layer):
    """Why a recurrent layer cannot be resized, or None."""
    cell = cell_of(layer)
    if cell is None:
        cell = getattr(layer, "cell", None)
        return (
            f"its cell ({type(cell).__name__}) is not a built-in SimpleRNN / "
            "LSTM / GRU cell"
        )
    if getattr(layer, "stateful", False):
        return "stateful recurrent layers keep per-batch states kprune does not resize"
    if getattr(cell, "kernel", None) is None:
        return "it is not built"
    return None


def gates_of(layer):
    """Number of gate blocks of a recurrent layer's cell."""
    return _GATES[type(cell_of(layer)).__name__]


def states_of(layer):
    """Number of state tensors a recurrent layer returns per call."""
    return 2 if gates_of(layer) == 4 else 1


def cell_arrays(layer):
    """`(kernel, recurrent_kernel, bias or None)` of a recurrent layer."""
    cell = cell_of(layer)
    bias = _numpy(cell.bias) if getattr(cell, "bias", None) is not None else None
    return _numpy(cell.kernel), _numpy(cell.recurrent_kernel), bias


def input_matrix(layer, kernel=None):
    """`(C_in, u)`: True where input channel `c` feeds unit `j` (any gate)."""
    if kernel is None:
        kernel = cell_arrays(layer)[0]
    units = cell_of(layer).units
    return (kernel.reshape(kernel.shape[0], -1, units) != 0).any(axis=1)


def recurrent_matrix(layer, recurrent=None):
    """`(u, u)`: True where unit `k` reads unit `j`'s state (diagonal off)."""
    if recurrent is None:
        recurrent = cell_arrays(layer)[1]
    units = cell_of(layer).units
    reads = (recurrent.reshape(units, -1, units) != 0).any(axis=1)
    np.fill_diagonal(reads, False)
    return reads


def resize_recurrent(layer, config, arrays, in_removed, in_fill, removed):
    """A recurrent layer's config and weights without some inputs / units.

    Args:
        layer: the original layer (SimpleRNN / LSTM / GRU / RNN of a cell).
        config: a copy of its config, edited and returned.
        arrays: `(kernel, recurrent_kernel, bias or None)`.
        in_removed: removed input channels; `in_fill` their constant values
            (folded into the input bias).
        removed: removed units.

    Returns:
        `(config, weights)` with weights a dict name -> array.
    """
    cell = cell_of(layer)
    units = cell.units
    gates = gates_of(layer)
    kernel, recurrent, bias = arrays
    in_removed = np.asarray(in_removed, dtype=int)
    kept_in = np.setdiff1d(np.arange(kernel.shape[0]), in_removed)
    kept = np.setdiff1d(np.arange(units), np.asarray(removed, dtype=int))
    cols = (np.arange(gates)[:, None] * units + kept[None, :]).reshape(-1)
    cell_config = config["cell"]["config"] if "cell" in config else config
    if len(in_removed) and np.any(in_fill[in_removed]):
        delta = in_fill[in_removed] @ kernel[in_removed]
        if bias is None:
            two_rows = gates == 3 and cell_config.get("reset_after", True)
            bias = np.zeros((2, gates * units) if two_rows else (gates * units,))
            cell_config["use_bias"] = True
        if bias.ndim == 2:
            bias = bias.copy()
            bias[0] = bias[0] + delta
        else:
            bias = bias + delta
    dtype = kernel.dtype
    weights = {
        "kernel": kernel[kept_in][:, cols],
        "recurrent_kernel": recurrent[kept][:, cols],
    }
    if bias is not None:
        weights["bias"] = bias[..., cols].astype(dtype)
    cell_config["units"] = len(kept)
    return config, weights


class RecurrentHandler(LayerHandler):
    """Handler for `SimpleRNN`, `LSTM`, `GRU` and `RNN` of their cells."""

    produces_units = True

    def _parts(self, node):
        """`(sequence position, initial state positions, mask positions)`."""
        if node.arguments is None:
            return 0, [], []
        positions = {id(t): i for i, t in enumerate(node.inputs)}
        sequence = node.argument("sequences", 0)
        if sequence is None:
            sequence = node.argument("inputs", 0)
        args, kwargs = node.arguments
        states = kwargs.get("initial_state")
        if states is None and len(args) > 1:
            states = args[1]
        slots = keras.tree.flatten(states) if states is not None else []
        state_positions = [s.index for s in slots if hasattr(s, "index")]
        seq_position = positions.get(id(sequence), 0)
        others = [
            i
            for i in range(len(node.inputs))
            if i != seq_position and i not in state_positions
        ]
        return seq_position, state_positions, others

    def check(self, node):
        reason = layer_refusal(node.layer)
        if reason:
            return reason
        if not node.outputs or node.outputs[0].channels != cell_of(node.layer).units:
            return "its output does not hold its units on the last axis"
        return None

    def connect(self, node, ctx):
        reason = self.check(node)
        if reason:
            ctx.pin_node(node, reason)
            return
        units = node.outputs[0]
        _, states, others = self._parts(node)
        for position in states:
            tensor = node.inputs[position]
            if tensor.channels == units.channels:
                ctx.tie(tensor, units)
            else:
                ctx.pin(tensor, f"it is an initial state of '{node.path}'")
        for position in others:
            ctx.pin(node.inputs[position], f"it is a mask of '{node.path}'")
        for tensor in node.outputs[1:]:
            ctx.tie(tensor, units)

    def uses(self, node, weights):
        if self.check(node):
            return []
        sequence, _, _ = self._parts(node)
        units = node.outputs[0]
        return [
            Use(sequence, input_matrix(node.layer), True, units),
            Use(units, recurrent_matrix(node.layer), False, units),
        ]

    def constant_mask(self, node, in_valid, weights, in_value=None):
        outputs = [np.zeros(t.channels, bool) for t in node.outputs]
        sequence, states, _ = self._parts(node)
        if self.check(node) or states or len(node.inputs) <= sequence:
            return outputs
        cell = cell_of(node.layer)
        try:
            zero = keras.ops.convert_to_numpy(cell.activation(keras.ops.zeros((1,))))
        except Exception:  # noqa: BLE001 - an activation we cannot probe
            return outputs
        if float(np.abs(zero).max()) != 0.0:
            return outputs
        kernel, recurrent, bias = cell_arrays(node.layer)
        units = cell.units
        gate = 0 if gates_of(node.layer) == 1 else 2  # SimpleRNN, LSTM c, GRU h
        cols = slice(gate * units, (gate + 1) * units)
        silent = np.zeros(kernel.shape[0], bool)
        if in_value is not None:
            silent = in_valid[sequence] & (in_value[sequence] == 0)
        zero = ~np.any(kernel[~silent, cols] != 0, axis=0)
        if bias is not None:
            zero &= ~np.any(bias.reshape(-1, bias.shape[-1])[:, cols] != 0, axis=0)
        reads = recurrent[:, cols] != 0  # (source unit, candidate of unit)
        while True:
            now = zero & ~np.any(reads[~zero], axis=0)
            if np.array_equal(now, zero):
                break
            zero = now
        return [zero.copy() for _ in node.outputs]

    def rebuild(self, change):
        sequence, _, _ = self._parts(change.node)
        return resize_recurrent(
            change.layer,
            change.config,
            cell_arrays(change.layer),
            change.in_removed[sequence],
            change.in_fill[sequence],
            change.out_removed[0],
        )


def _register():
    from kprune.surgery.handlers.base import register_handler

    handler = RecurrentHandler()
    for name in ("SimpleRNN", "LSTM", "GRU", "RNN"):
        register_handler(getattr(keras.layers, name), handler)


_register()

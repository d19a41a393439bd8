"""Small models of the structures other pruning libraries test.

The list follows Torch-Pruning's tests (concat, split, concat + split,
reshape / permute, multiple inputs and outputs, grouped convolutions) and
keras-surgeon's (every layer in both data formats, merges, SimpleRNN / GRU /
LSTM), plus what issue 17 found missing (Bidirectional, TimeDistributed,
channels_first, Permute of the channel axis, ops on the channel axis at model
level, Lambda, attention heads, Embedding consumers, squeeze-and-excitation).

Each `Case` builds a model, zeroes weights so that known units are dead,
names units `dead_units` must find, and gives a plan for `remove_units`.
"""

import dataclasses

import keras

L = keras.layers
ops = keras.ops
CF = {"data_format": "channels_first"}
SCALE = 0.5  # read by a Lambda below: a name from outside the function


@dataclasses.dataclass
class Case:
    build: object
    zero: object = None
    dead: dict = dataclasses.field(default_factory=dict)
    plan: dict = dataclasses.field(default_factory=dict)
    runs: bool = True  # False: the model cannot run here (NCHW conv on CPU)
    saves: bool = True  # False: Keras itself cannot load the original back
    safe_mode: bool = True


CASES = {}


def case(name, **kwargs):
    def register(build):
        CASES[name] = Case(build, **kwargs)
        return build

    return register


# ------------------------------------------------------------- weight edits
def set_weight(layer, name, edit):
    """Apply `edit(array)` (in place) to the weight called `name`."""
    for variable in layer.weights:
        if variable.name == name:
            value = keras.ops.convert_to_numpy(variable).copy()
            edit(value)
            variable.assign(value)
            return
    raise KeyError(f"{layer.name} has no weight {name}")


def zero_rows(layer, rows, name="kernel"):
    """The layer stops reading input channels `rows`."""

    def edit(kernel):
        kernel[..., rows, :] = 0.0

    set_weight(layer, name, edit)


def zero_recurrent_reads(layer, units):
    """No other unit of a recurrent layer reads `units` (itself still does)."""
    width = layer.cell.units

    def edit(kernel):
        for unit in units:
            keep = kernel[unit].reshape(-1, width)[:, unit].copy()
            kernel[unit] = 0.0
            kernel[unit].reshape(-1, width)[:, unit] = keep

    set_weight(layer, "recurrent_kernel", edit)


def zero_rnn_units(rnn, units, readers):
    """Recurrent `units` are read by no other unit and by none of `readers`."""
    zero_recurrent_reads(rnn, units)
    for reader in readers:
        zero_rows(reader, units)


def constant_unit(layer, unit, value=0.4, kernel="kernel"):
    """A Dense / Conv unit with no incoming weights: it outputs its bias."""

    def edit(values):
        values[..., unit] = 0.0

    set_weight(layer, kernel, edit)

    def bias(values):
        values[unit] = value

    set_weight(layer, "bias", bias)


def get(model, path):
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


# ---------------------------------------------------------------- recurrent
def _stacked(cls, **kwargs):
    inputs = keras.Input((6, 5))
    x = L.Dense(6, name="pre")(inputs)
    x = cls(8, return_sequences=True, name="rnn", **kwargs)(x)
    x = L.Dense(4, name="post")(x)
    x = cls(3, name="rnn2", **kwargs)(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


def _zero_stacked(model):
    constant_unit(get(model, "pre"), 2)  # folds into the recurrent bias
    zero_rnn_units(get(model, "rnn"), [1, 6], [get(model, "post")])
    zero_rows(get(model, "rnn"), [4])  # input 4 unread: pre unit 4 is dead


_RNN_CASE = {
    "zero": _zero_stacked,
    "dead": {"pre": [2, 4], "rnn": [1, 6]},
    "plan": {"rnn": [0, 3], "rnn2": [1]},
}
for _name, _cls, _kwargs in (
    ("simple_rnn", L.SimpleRNN, {}),
    ("lstm", L.LSTM, {}),
    ("gru", L.GRU, {}),
    ("gru_reset_before", L.GRU, {"reset_after": False}),
):
    CASES[_name] = Case((lambda c=_cls, k=_kwargs: _stacked(c, **k)), **dict(_RNN_CASE))


@case(
    "lstm_states",
    zero=lambda m: zero_rnn_units(
        get(m, "rnn"), [2], [get(m, "a"), get(m, "b"), get(m, "c")]
    ),
    dead={"rnn": [2]},
    plan={"rnn": [0, 5]},
)
def lstm_states():
    inputs = keras.Input((6, 4))
    seq, h, c = L.LSTM(6, return_sequences=True, return_state=True, name="rnn")(inputs)
    a = L.Dense(3, name="a")(L.GlobalAveragePooling1D()(seq))
    b = L.Dense(3, name="b")(h)
    c = L.Dense(3, name="c")(c)
    return keras.Model(inputs, L.Add()([a, b, c]))


@case(
    "encoder_decoder",
    zero=lambda m: (
        zero_recurrent_reads(get(m, "encoder"), [3]),
        zero_recurrent_reads(get(m, "decoder"), [3]),
        zero_rows(get(m, "out"), [3]),
    ),
    dead={"encoder": [3]},
    plan={"encoder": [0]},
)
def encoder_decoder():
    """The decoder starts from the encoder's states: their units are one."""
    source = keras.Input((5, 4))
    target = keras.Input((3, 4))
    _, h, c = L.LSTM(6, return_state=True, name="encoder")(source)
    x = L.Dense(5, name="dec_in")(target)
    x = L.LSTM(6, return_sequences=True, name="decoder")(x, initial_state=[h, c])
    return keras.Model([source, target], L.Dense(2, name="out")(x))


@case(
    "rnn_of_cell",
    zero=lambda m: zero_rnn_units(get(m, "rnn"), [1], [get(m, "out")]),
    dead={"rnn": [1]},
    plan={"rnn": [2]},
)
def rnn_of_cell():
    inputs = keras.Input((6, 3))
    x = L.RNN(L.GRUCell(5), name="rnn")(inputs)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


def _bidirectional(mode, return_state=False):
    def build():
        inputs = keras.Input((6, 4))
        layer = L.Bidirectional(
            L.LSTM(5, return_sequences=True, return_state=return_state),
            merge_mode=mode,
            name="bi",
        )
        outputs = layer(inputs)
        if mode is None:
            x = L.Concatenate()([L.Dense(3, name="f")(outputs[0]), outputs[1]])
        else:
            x = outputs[0] if return_state else outputs
        x = L.Dense(4, name="post")(x)
        x = L.GlobalAveragePooling1D()(x)
        if return_state:
            x = L.Concatenate()([x, L.Dense(2, name="state")(outputs[1])])
        return keras.Model(inputs, L.Dense(2, name="out")(x))

    return build


def _zero_bidirectional(mode, return_state=False):
    """Forward unit 1 and backward unit 3 die (unit 1 of both when merged)."""

    def zero(model):
        bi = get(model, "bi")
        forward, backward = (1, 3) if mode in ("concat", None) else (1, 1)
        zero_recurrent_reads(bi.forward_layer, [forward])
        zero_recurrent_reads(bi.backward_layer, [backward])
        post = get(model, "post")
        if mode == "concat":
            zero_rows(post, [forward, 5 + backward])
        elif mode is None:
            zero_rows(get(model, "f"), [forward])
            zero_rows(post, [3 + backward])
        else:
            zero_rows(post, [forward])
        if return_state:
            zero_rows(get(model, "state"), [forward])

    return zero


for _mode in ("concat", "sum", "ave", "mul", None):
    _plan = {"bi": [0, 7]} if _mode in ("concat", None) else {"bi": [0]}
    _dead = [1, 8] if _mode in ("concat", None) else [1, 6]
    CASES[f"bidirectional_{_mode}"] = Case(
        _bidirectional(_mode), _zero_bidirectional(_mode), {"bi": _dead}, _plan
    )
CASES["bidirectional_states"] = Case(
    _bidirectional("concat", True),
    _zero_bidirectional("concat", True),
    {"bi": [1, 8]},
    {"bi": [2, 9]},
)


@case(
    "time_distributed",
    zero=lambda m: zero_rows(get(m, "td2"), [0, 5]),
    dead={"td": [0, 5]},
    plan={"td": [1], "td2": [2]},
)
def time_distributed():
    inputs = keras.Input((5, 6))
    x = L.TimeDistributed(L.Dense(8), name="td")(inputs)
    x = L.TimeDistributed(L.BatchNormalization(), name="td_bn")(x)
    x = L.ReLU()(x)
    x = L.TimeDistributed(L.Dense(4), name="td2")(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "time_distributed_conv",
    zero=lambda m: zero_rows(get(m, "rnn"), [2]),
    dead={"td": [2]},
    plan={"td": [0], "rnn": [1]},
)
def time_distributed_conv():
    inputs = keras.Input((3, 8, 8, 2))
    x = L.TimeDistributed(L.Conv2D(6, 3), name="td")(inputs)
    x = L.TimeDistributed(L.MaxPooling2D())(x)
    x = L.TimeDistributed(L.GlobalAveragePooling2D())(x)
    x = L.LSTM(4, name="rnn")(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


# ------------------------------------------------------------ channels_first
@case(
    "channels_first_2d",
    zero=lambda m: (
        zero_rows(get(m, "sep2"), [1], name="depthwise_kernel"),
        zero_rows(get(m, "sep"), [2], name="depthwise_kernel"),
        constant_unit(get(m, "sep"), 3, 0.0, kernel="pointwise_kernel"),
    ),
    dead={"sep1": [1], "stem": [2], "se": [3], "sep": [3]},
    plan={"stem": [0], "sep1": [3]},
)
def channels_first_2d():
    """Layers that TensorFlow runs channels_first on CPUs (no Conv1D/2D).

    The stem has 8 filters: TensorFlow (2.21, CPU) adds a channels_first
    DepthwiseConv2D's bias wrongly when it has exactly 5 channels.
    """
    inputs = keras.Input((3, 12, 12))
    x = L.SeparableConv2D(8, 3, name="stem", **CF)(inputs)
    x = L.BatchNormalization(axis=1)(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D(**CF)(x)
    x = L.ZeroPadding2D(1, **CF)(x)
    x = L.DepthwiseConv2D(3, name="dw", **CF)(x)
    x = L.SeparableConv2D(5, 3, padding="same", name="sep", **CF)(x)
    x = L.UpSampling2D(**CF)(x)
    x = L.Cropping2D(1, **CF)(x)
    s = L.GlobalAveragePooling2D(keepdims=True, **CF)(x)
    s = L.SeparableConv2D(5, 1, activation="relu", name="se", **CF)(s)
    x = L.Multiply()([x, s])
    y = L.SeparableConv2D(4, 3, name="sep1", **CF)(x)
    y = L.SeparableConv2D(4, 3, padding="same", name="sep2", **CF)(y)
    a = L.Flatten()(L.AveragePooling2D(2, **CF)(y))
    b = L.Flatten(**CF)(L.AveragePooling2D(4, **CF)(y))
    c = L.GlobalMaxPooling2D(**CF)(y)
    x = L.Concatenate()([a, b, c])
    return keras.Model(inputs, L.Dense(3, name="out")(x))


@case(
    "channels_first_3d",
    zero=lambda m: zero_rows(get(m, "c2"), [1, 4]),
    dead={"c1": [1, 4]},
    plan={"c1": [0], "c2": [2]},
)
def channels_first_3d():
    inputs = keras.Input((2, 6, 6, 6))
    x = L.Conv3D(6, 3, name="c1", **CF)(inputs)
    x = L.BatchNormalization(axis=1)(x)
    x = L.MaxPooling3D(2, **CF)(x)
    x = L.UpSampling3D(2, **CF)(x)
    x = L.ZeroPadding3D(1, **CF)(x)
    x = L.Conv3D(4, 3, name="c2", **CF)(x)
    y = L.Cropping3D(1, **CF)(x)
    x = L.Concatenate(axis=1)([y, L.Conv3D(3, 1, name="c3", **CF)(y)])
    x = L.GlobalAveragePooling3D(**CF)(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "channels_first_conv",
    zero=lambda m: zero_rows(get(m, "c2"), [1, 4]),
    dead={"c1": [1, 4]},
    plan={"c1": [0], "c3": [1]},
    runs=False,
)
def channels_first_conv():
    """Conv1D / Conv2D channels_first: TensorFlow cannot run them on a CPU
    (checked by weights in the test; exact under JAX, see docs)."""
    inputs = keras.Input((3, 10, 10))
    x = L.Conv2D(6, 3, name="c1", **CF)(inputs)
    x = L.BatchNormalization(axis=1)(x)
    x = L.Conv2D(5, 3, name="c2", **CF)(x)
    x = L.Reshape((5, 36))(x)
    x = L.Conv1D(4, 3, name="c3", **CF)(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


# ---------------------------------------------------- permute, ops, lambda
@case(
    "permute_mixer",
    zero=lambda m: zero_rows(get(m, "chan2"), [1]),
    dead={"chan": [1]},
    plan={"chan": [0, 5]},
)
def permute_mixer():
    """MLP-Mixer: Permute moves the channels, a Dense mixes the tokens."""
    inputs = keras.Input((6, 5))
    x = L.Dense(8, name="chan")(inputs)
    t = L.Permute((2, 1))(x)
    t = L.Dense(6, name="tok")(t)
    t = L.Permute((2, 1))(t)
    x = L.Add()([x, t])
    x = L.Dense(4, name="chan2")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "permute_constant",
    zero=lambda m: constant_unit(get(m, "d"), 2),
    dead={"d": [2]},
    plan={"d": [0]},
)
def permute_constant():
    """A constant channel upstream of a Permute that moves the channels."""
    inputs = keras.Input((6, 4))
    x = L.Dense(5, name="d")(inputs)
    x = L.Permute((2, 1))(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "ops_split",
    zero=lambda m: (zero_rows(get(m, "a"), [1]), zero_rows(get(m, "b"), [1])),
    dead={"d": [1, 4]},
    plan={"d": [0]},
)
def ops_split():
    inputs = keras.Input((8,))
    x = L.Dense(6, name="d")(inputs)
    a, b = ops.split(x, 2, axis=-1)
    return keras.Model(
        inputs, L.Add()([L.Dense(3, name="a")(a), L.Dense(3, name="b")(b)])
    )


@case(
    "ops_split_indices",
    zero=lambda m: zero_rows(get(m, "b"), [0]),
    dead={"d": [2]},
    plan={"d": [0, 4]},
)
def ops_split_indices():
    inputs = keras.Input((8,))
    x = L.Dense(7, name="d")(inputs)
    a, b, c = ops.split(x, [2, 5], axis=-1)
    y = L.Concatenate()([L.Dense(3, name="a")(a), L.Dense(3, name="b")(b), c])
    return keras.Model(inputs, L.Dense(2, name="out")(y))


@case(
    "getitem",
    zero=lambda m: zero_rows(get(m, "a"), [0]),
    dead={"d": [2, 5, 6]},
    plan={"d": [0, 3]},
)
def getitem():
    inputs = keras.Input((5, 8))
    x = L.Dense(7, name="d")(inputs)
    a = L.Dense(3, name="a")(x[:, :, 2:5])  # channels 5, 6 are read by nobody
    b = L.Dense(3, name="b")(x[..., 1])  # channel 1 read alone
    c = L.Dense(3, name="c")(x[:, 0, :2])
    y = L.Concatenate()([L.Flatten()(a), b, c])
    return keras.Model(inputs, L.Dense(2, name="out")(y))


@case(
    "ops_concat_transpose",
    zero=lambda m: zero_rows(get(m, "out"), [2]),
    dead={"a": [2]},
    plan={"a": [0], "b": [1]},
)
def ops_concat_transpose():
    inputs = keras.Input((4, 6))
    a = L.Dense(5, name="a")(inputs)
    b = L.Dense(3, name="b")(inputs)
    x = ops.concatenate([a, b], axis=-1)
    x = ops.transpose(x, (0, 2, 1))
    x = L.Dense(3, name="tok")(x)  # mixes the steps; channels pass
    x = ops.transpose(x, (0, 2, 1))
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "unstack_steps",
    zero=lambda m: zero_rows(get(m, "out"), [3]),
    dead={"d": [3]},
    plan={"d": [0]},
)
def unstack_steps():
    inputs = keras.Input((3, 6))
    x = L.Dense(5, name="d")(inputs)
    first, second, _ = ops.unstack(x, axis=1)
    return keras.Model(inputs, L.Dense(2, name="out")(first + second))


@case(
    "lambda_untouched",
    zero=lambda m: zero_rows(get(m, "out"), [1]),
    dead={"d": [1]},
    plan={"d": [0]},
    saves=False,  # Keras cannot load a Lambda reading outside names back
)
def lambda_untouched():
    inputs = keras.Input((6,))
    x = L.Lambda(lambda t: t * SCALE, name="scale")(inputs)
    x = L.Dense(5, name="d")(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


# --------------------------------------------- attention, embedding, merges
@case(
    "attention",
    zero=lambda m: set_weight(
        get(m, "mha")._output_dense, "kernel", lambda k: k.__setitem__(1, 0.0)
    ),
    dead={"mha": [1]},
    plan={"mha": [0], "ffn": [1]},
)
def attention():
    inputs = keras.Input((5, 8))
    x = L.MultiHeadAttention(3, 4, name="mha")(inputs, inputs)
    x = L.Add()([inputs, x])
    y = L.Dense(6, activation="relu", name="ffn")(x)
    x = L.Add()([x, L.Dense(8, name="ffn_out")(y)])
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "embedding_consumers",
    zero=lambda m: (
        zero_rows(get(m, "dense"), [1]),
        zero_rows(get(m, "conv"), [1]),
        set_weight(get(m, "emb"), "embeddings", lambda t: t.__setitem__((..., 4), 0)),
    ),
    dead={"emb": [1, 4]},
    plan={"emb": [0]},
)
def embedding_consumers():
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 6, name="emb")(inputs)
    a = L.Dense(3, name="dense")(x)
    b = L.Conv1D(3, 3, padding="same", name="conv")(x)
    x = L.Concatenate()([a, b])
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "squeeze_excite_zero",
    zero=lambda m: constant_unit(get(m, "conv"), 3, 0.0),
    dead={"conv": [3], "se_expand": [3]},
    plan={"conv": [0]},
)
def squeeze_excite_zero():
    """A filter zeroed before the SE product: the product is zero."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
    s = L.Conv2D(6, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply()([x, s])
    x = L.Conv2D(4, 3, padding="same", name="project")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "concat_split",
    zero=lambda m: (zero_rows(get(m, "left"), [1]), zero_rows(get(m, "right"), [1])),
    dead={"a": [1]},
    plan={"a": [0], "b": [2]},
)
def concat_split():
    """Torch-Pruning's concat then split: the sections follow the concat."""
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(4, 1, name="a")(inputs)
    b = L.Conv2D(4, 1, name="b")(inputs)
    x = L.Concatenate()([a, b])
    left, right = ops.split(x, 2, axis=-1)
    x = L.Add()(
        [L.Conv2D(3, 1, name="left")(left), L.Conv2D(3, 1, name="right")(right)]
    )
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "cascaded_concat",
    zero=lambda m: (zero_rows(get(m, "out"), [3]), zero_rows(get(m, "d"), [3])),
    dead={"a": [3]},
    plan={"a": [0], "c": [1]},
)
def cascaded_concat():
    inputs = keras.Input((10,))
    a = L.Dense(4, name="a")(inputs)
    b = L.Dense(3, name="b")(inputs)
    c = L.Dense(2, name="c")(inputs)
    x = L.Concatenate()([L.Concatenate()([a, b]), c])
    x = L.Concatenate()([x, L.Dense(2, name="d")(x)])
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "non_channel_concat",
    zero=lambda m: zero_rows(get(m, "out"), [2]),
    dead={"a": [2], "b": [2]},
    plan={"a": [0]},
)
def non_channel_concat():
    """Concatenated along the steps: the channels of both inputs are one."""
    inputs = keras.Input((4, 6))
    a = L.Dense(5, name="a")(inputs)
    b = L.Dense(5, name="b")(inputs)
    x = L.Concatenate(axis=1)([a, b])
    x = L.GlobalMaxPooling1D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "multi_io",
    zero=lambda m: (zero_rows(get(m, "head_a"), [1]), zero_rows(get(m, "head_b"), [1])),
    dead={"shared": [1]},
    plan={"shared": [0], "a": [2]},
)
def multi_io():
    left = keras.Input((6,), name="left")
    right = keras.Input((6,), name="right")
    shared = L.Dense(5, activation="relu", name="shared")
    x = L.Add()([shared(left), shared(right)])
    a = L.Dense(4, name="a")(left)
    return keras.Model(
        [left, right],
        [
            L.Dense(2, name="head_a")(x),
            L.Dense(3, name="head_b")(L.Concatenate()([x, a])),
        ],
    )


@case(
    "grouped_conv",
    zero=lambda m: (zero_rows(get(m, "pw"), [2]), zero_rows(get(m, "expand"), [2])),
    dead={"stem": [2]},
    plan={"stem": [0, 5]},
)
def grouped_conv():
    """ConvNeXt-style: a depthwise conv written as Conv2D(groups=C)."""
    inputs = keras.Input((8, 8, 3))
    stem = L.Conv2D(6, 1, name="stem")(inputs)
    x = L.Conv2D(6, 3, padding="same", groups=6, name="dw")(stem)
    x = L.Dense(12, activation="gelu", name="expand")(x)
    x = L.Dense(6, name="project")(x)
    x = L.Add()([stem, x])
    x = L.Conv2D(4, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "grouped_conv_even",
    zero=lambda m: (
        zero_rows(get(m, "gc"), [1]),  # position 1 of both input groups
        zero_rows(get(m, "pw"), [0, 3]),  # position 0 of both filter groups
    ),
    dead={"stem": [1, 5], "gc": [0, 3]},
    plan={"stem": [2, 6], "gc": [1, 4]},
)
def grouped_conv_even():
    """`1 < groups < C`: a position leaves every group at once."""
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 1, name="stem")(inputs)
    x = L.BatchNormalization()(x)
    x = L.Conv2D(6, 3, padding="same", groups=2, name="gc")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(4, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "channels_first_dense",
    zero=lambda m: zero_rows(get(m, "out"), [1]),
    dead={"sep": [1]},
    plan={"sep": [0]},
)
def channels_first_dense():
    """A Dense on a channels_first tensor mixes the last (spatial) axis:
    the channels pass through it."""
    inputs = keras.Input((3, 8, 8))
    x = L.SeparableConv2D(6, 3, name="sep", **CF)(inputs)
    x = L.BatchNormalization(axis=1)(x)
    x = L.Dense(5, name="mix")(x)
    x = L.GlobalAveragePooling2D(**CF)(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "unstack_channels",
    zero=lambda m: zero_rows(get(m, "out"), [3]),  # e's unit 1
    dead={"e": [1]},
    plan={"e": [0]},
)
def unstack_channels():
    """`ops.unstack` on the channels: `d` stays whole, `e` is prunable."""
    inputs = keras.Input((6,))
    a, b, c = ops.unstack(L.Dense(3, name="d")(inputs), axis=-1)
    y = ops.stack([a * b, c], axis=-1)
    x = L.Concatenate()([y, L.Dense(4, name="e")(inputs)])
    return keras.Model(inputs, L.Dense(2, name="out")(x))


@case(
    "lambda_on_path",
    zero=lambda m: zero_rows(get(m, "out"), [6]),  # e's unit 1
    dead={"e": [1]},
    plan={"e": [0]},
    saves=False,  # Keras cannot load a Lambda reading outside names back
)
def lambda_on_path():
    """A Lambda between two Dense layers: `d` stays whole, `e` is prunable."""
    inputs = keras.Input((6,))
    x = L.Dense(5, name="d")(inputs)
    x = L.Lambda(lambda t: t * SCALE, name="scale")(x)
    x = L.Concatenate()([x, L.Dense(4, name="e")(inputs)])
    return keras.Model(inputs, L.Dense(2, name="out")(x))

"""Model builders and weight randomizers shared by the surgery tests."""

import keras

L = keras.layers


def randomize(model, rng, zero_fraction=0.3, zero_rows_fraction=0.1):
    """Random BN statistics; zero the incoming weights of some units and the
    outgoing rows of some channels, so that dead units exist."""
    for layer in _all_layers(model):
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            new = []
            for w, v in zip(layer.weights, weights):
                if w.name == "moving_variance":
                    new.append(rng.uniform(0.5, 2.0, v.shape))
                elif w.name == "gamma":
                    new.append(rng.uniform(0.5, 1.5, v.shape))
                else:
                    new.append(rng.normal(0, 0.5, v.shape))
            layer.set_weights(new)
        elif isinstance(
            layer, (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.SeparableConv2D)
        ) and not isinstance(layer, (L.DepthwiseConv2D, L.Conv2DTranspose)):
            names = [w.name for w in layer.weights]
            kernel_name = (
                "pointwise_kernel" if "pointwise_kernel" in names else "kernel"
            )
            index = names.index(kernel_name)
            kernel = weights[index].copy()
            units = kernel.shape[-1]
            if units >= 4:
                dead = rng.choice(units, int(zero_fraction * units), replace=False)
                kernel[..., dead] = 0.0
                if "bias" in names:
                    bias = weights[names.index("bias")].copy()
                    bias[dead[: len(dead) // 2]] = 0.0
                    bias[dead[len(dead) // 2 :]] = rng.normal(
                        0, 0.5, len(dead) - len(dead) // 2
                    )
                    weights[names.index("bias")] = bias
            rows = kernel.shape[-2]
            if rows >= 4 and zero_rows_fraction:
                cut = rng.choice(
                    rows, max(1, int(zero_rows_fraction * rows)), replace=False
                )
                kernel[..., cut, :] = 0.0
            weights[index] = kernel
            layer.set_weights(weights)
        elif weights and not isinstance(layer, keras.Model):
            layer.set_weights(
                [w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in weights]
            )


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def mlp():
    inputs = keras.Input((12,))
    x = L.Dense(16, activation="relu", name="fc1")(inputs)
    x = L.Dropout(0.2)(x)
    x = L.Dense(16, name="fc2")(x)
    x = L.LeakyReLU(0.1)(x)
    x = L.Activation("tanh")(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def cnn_flatten():
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, name="c1")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(12, 3, padding="same", name="c2")(x)
    x = L.ELU()(x)
    x = L.AveragePooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(10, activation="relu", name="fc")(x)
    return keras.Model(inputs, L.Dense(4, name="out")(x))


def residual():
    inputs = keras.Input((10, 10, 3))
    stem = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="bn_a")(stem)
    x = L.ReLU()(x)
    x = L.Conv2D(8, 1, name="branch")(x)
    x = L.BatchNormalization(name="bn_b")(x)
    x = L.Add()([stem, x])
    y = L.Conv2D(8, 1, name="branch2")(x)
    x = L.Add()([x, y])
    x = L.Subtract()([x, L.Conv2D(8, 1, name="sub")(x)])
    x = L.Average()([x, L.Conv2D(8, 1, name="avg")(x)])
    x = L.Maximum()([x, L.Conv2D(8, 1, name="max")(x)])
    x = L.Minimum()([x, L.Conv2D(8, 1, name="min")(x)])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def concat_and_se():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 1, name="a")(inputs)
    b = L.Conv2D(5, 3, padding="valid", name="b")(inputs)
    b = L.ZeroPadding2D(1)(b)
    x = L.Concatenate(name="cat")([a, b])
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = L.Conv2D(11, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply()([x, s])
    x = L.Conv2D(7, 1, name="project")(x)
    g = L.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(g))


def depthwise_separable():
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 1, name="expand")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.SeparableConv2D(10, 3, padding="valid", name="sep")(x)
    x = L.Cropping2D(1)(x)
    x = L.UpSampling2D()(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw2")(x)
    x = L.Conv2D(6, 1, name="pw")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def sequence_model():
    inputs = keras.Input((12,), dtype="int32")
    x = L.Embedding(20, 8, name="emb")(inputs)
    x = L.Conv1D(12, 3, padding="causal", name="c1")(x)
    x = L.GroupNormalization(groups=4, name="gn")(x)
    x = L.Conv1D(12, 3, name="c2")(x)
    y = L.Dense(12, name="proj")(x)
    x = L.Concatenate(axis=1)([x, y])
    x = L.Conv1DTranspose(6, 3, strides=2, name="up")(x)
    x = L.LayerNormalization(name="ln")(x)
    x = L.Dense(5, name="mix")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def reshapes():
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, padding="same", name="c")(inputs)
    x = L.PReLU(shared_axes=[1, 2])(x)
    x = L.Reshape((36, 4))(x)
    x = L.Permute((1, 2))(x)
    x = L.Dense(5, name="tok")(x)
    x = L.Reshape((180,))(x)
    x = L.Dense(8, activation="relu", name="fc")(x)
    x = L.RepeatVector(3)(x)
    x = L.Dense(6, name="seq")(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def conv3d():
    inputs = keras.Input((6, 6, 6, 2))
    x = L.Conv3D(5, 3, name="c3")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling3D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def nested():
    block_in = keras.Input((8, 8, 4))
    y = L.Conv2D(6, 3, padding="same", name="inner_conv")(block_in)
    y = L.BatchNormalization(name="inner_bn")(y)
    y = L.ReLU()(y)
    block = keras.Model(block_in, y, name="block")
    head = keras.Sequential(
        [L.GlobalAveragePooling2D(), L.Dense(8, activation="relu", name="head_fc")],
        name="head",
    )
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="stem")(inputs)
    a = block(x)
    b = block(L.Conv2D(4, 1, name="stem2")(inputs))
    x = L.Add()([a, b])
    x = head(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


def shared_dense():
    left, right = keras.Input((6,), name="left"), keras.Input((6,), name="right")
    shared = L.Dense(10, activation="relu", name="shared")
    x = L.Concatenate()([shared(left), shared(right)])
    x = L.Dense(8, name="fc")(x)
    return keras.Model([left, right], [L.Dense(2, name="out_a")(x), x])


def sequential():
    return keras.Sequential(
        [
            keras.Input((10,)),
            L.Dense(12, activation="relu", name="fc1"),
            L.BatchNormalization(),
            L.Dense(12, activation="sigmoid", name="fc2"),
            L.Dense(3, name="out"),
        ]
    )


BUILDERS = {
    f.__name__: f
    for f in (
        mlp,
        cnn_flatten,
        residual,
        concat_and_se,
        depthwise_separable,
        sequence_model,
        reshapes,
        conv3d,
        nested,
        shared_dense,
        sequential,
    )
}


def sample_inputs(model, rng, batch=3):
    out = []
    for x in model.inputs:
        shape = (batch,) + tuple(d or 8 for d in x.shape[1:])
        if "int" in str(x.dtype):
            out.append(rng.integers(0, 20, shape).astype("int32"))
        else:
            out.append(rng.normal(size=shape).astype("float32"))
    return out if len(out) > 1 else out[0]


def more_layers():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="c")(inputs)
    x = L.SpatialDropout2D(0.1)(x)
    x = L.GaussianNoise(0.1)(x)
    x = L.Rescaling(scale=[0.5, 1.0, 2.0, 1.5, 1.0, 0.25], offset=0.1)(x)
    x = L.Normalization(mean=[0.1] * 6, variance=[2.0] * 6)(x)
    x = L.Conv2DTranspose(5, 3, strides=2, name="up")(x)
    x = L.Conv2D(4, 1, name="pw")(x)
    x = L.Reshape((-1, 4))(x)
    x = L.SeparableConv1D(5, 3, name="sep1d")(x)
    x = L.DepthwiseConv1D(3, name="dw1d")(x)
    x = L.Conv1D(4, 1, name="c1d")(x)
    x = L.GlobalMaxPooling1D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x))


BUILDERS["more_layers"] = more_layers

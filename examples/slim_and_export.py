"""From a model with dead filters to a verified, smaller TFLite file.

    python examples/slim_and_export.py

Builds a small CNN, zeroes a third of its conv filters (as group-sparse
training would), then: `kprune.surgery.slim` (exact) -> before/after report ->
`kprune.export.to_tflite` (verified with LiteRT) -> size and latency.
"""

import os
import tempfile

import keras
import numpy as np

import kprune


def build():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(20, 5, activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(50, 5, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(500, activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc2")(x))


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build()
    for name in ("conv1", "conv2", "fc1"):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        dead = rng.choice(kernel.shape[-1], kernel.shape[-1] // 3, replace=False)
        kernel[..., dead], bias[dead] = 0.0, 0.0
        layer.set_weights([kernel, bias])

    small = kprune.surgery.slim(model)
    x = rng.random((8, 28, 28, 1), dtype=np.float32)
    diff = kprune.testing.assert_same_outputs(model, small, x)
    print(kprune.report.format_table(kprune.report.compare(model, small)))
    print(f"max output difference (relative): {diff:.2e}")

    with tempfile.TemporaryDirectory() as tmp:
        for label, m in (("original", model), ("slim", small)):
            path = kprune.export.to_tflite(m, os.path.join(tmp, f"{label}.tflite"))
            stats = kprune.export.measure_tflite(path, runs=30)
            print(
                f"{label:8s} {stats['bytes']:>9,d} bytes  "
                f"{stats['latency_ms_median']:.3f} ms (LiteRT, 1 thread)"
            )


if __name__ == "__main__":
    main()

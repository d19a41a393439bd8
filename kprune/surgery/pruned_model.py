"""`PrunedModel`: a smaller copy of a Functional subclass that saves and loads.

A KerasHub `Backbone` (or a user's own Functional subclass) saves itself as
its constructor arguments; the layers inside need not be serializable on
their own, and some are not (a `get_config` that raises, a config that does
not rebuild the layer). Once units are removed, the constructor can no
longer express the model (each block may keep a different width), so the
rebuilder returns a `PrunedModel`: a Functional model whose config is the
original model's config plus, per changed layer, how it changed. Loading
builds the original architecture from its config, replaces the changed
layers (from their new configs, or by swapping the resized sublayers into
the original layer) and then loads the weights; unchanged layers are the
ones the original's constructor makes.
"""

import keras

from kprune.surgery.compiling import clone_model
from kprune.surgery.resized import apply_swap

_FORMAT = "kprune.pruned_model"


def needs_plan_format(model):
    """True for a Functional subclass that saves its constructor arguments."""
    if isinstance(model, keras.Sequential):
        return False
    cls = type(model)
    if cls.__name__ == "Functional" or cls is keras.Model:
        return False
    try:
        from keras.src.models.functional import functional_like_constructor
    except ImportError:  # pragma: no cover - older Keras
        return True
    return not functional_like_constructor(cls)


def input_tensors(model, shapes=None):
    """New `keras.Input`s shaped like the model's (or `shapes`), same names."""
    flat = list(model.inputs)
    shapes = shapes or [x.shape for x in flat]
    fresh = []
    for x, shape in zip(flat, shapes):
        history = getattr(x, "_keras_history", None)
        name = history[0].name if history is not None else x.name
        fresh.append(keras.Input(batch_shape=shape, dtype=x.dtype, name=name))
    if isinstance(model, keras.Sequential):
        return fresh[0]
    return keras.tree.pack_sequence_as(model.input, fresh)


def record_of(layer):
    """How a rebuilt composite layer is saved in a `PrunedModel`'s changes."""
    swap = getattr(layer, "_kprune_swap", None)
    if swap is not None:
        return swap
    try:
        return {"config": keras.saving.serialize_keras_object(layer)}
    except Exception as error:  # noqa: BLE001 - reported when saving
        return {"unsaveable": f"{type(error).__name__}: {error}"}


class _Replayer:
    """`clone_function` that builds the changed layers from their records."""

    def __init__(self, records):
        self.records = records
        self.memo = {}
        self.paths = {}
        self.positions = {}
        self.by_position = {
            tuple(record["at"]): record
            for record in records.values()
            if isinstance(record, dict) and "at" in record
        }

    def index(self, model, prefix="", at=()):
        for i, layer in enumerate(model.layers):
            path = prefix + layer.name
            self.paths.setdefault(id(layer), path)
            self.positions.setdefault(id(layer), at + (i,))
            if isinstance(layer, keras.Model):
                self.index(layer, path + "/", at + (i,))

    def __call__(self, layer):
        key = id(layer)
        if key in self.memo:
            return self.memo[key]
        record = self.records.get(self.paths.get(key))
        if record is None:
            # A class that names its layers after the model's name (KerasHub
            # prefixes them when rebuilt from a config): found by position.
            record = self.by_position.get(self.positions.get(key), {})
        if isinstance(layer, keras.Model):
            shapes = record.get("inputs")
            new = clone_model(
                layer,
                compile=False,
                input_tensors=input_tensors(
                    layer, shapes and [tuple(s) for s in shapes]
                ),
                clone_function=self,
            )
        elif "config" in record:
            new = keras.saving.deserialize_keras_object(record["config"])
        elif "swap" in record:
            new = layer
            apply_swap(new, record)
        else:
            new = layer  # the original architecture's own, fresh layer
        self.memo[key] = new
        return new


@keras.saving.register_keras_serializable(package="kprune")
class PrunedModel(keras.Model):
    """A Functional subclass with units removed, saved as config + changes.

    Made by `kprune.surgery.remove_units` and `slim` for models whose class
    saves its constructor arguments (KerasHub backbones); behaves like any
    Functional model and round-trips through `.keras` (after
    `import kprune`).

    Args:
        base: the original model's serialized config
            (`keras.saving.serialize_keras_object(model)`).
        changes: dict layer path -> record: `{"config": serialized layer}`,
            `{"swap": {attribute path: serialized sublayer}, "call": spec}`,
            or `{"inputs": shapes}` for a nested model whose inputs narrowed;
            `"at"`: the layer's position (indices into `layers`, level by
            level), used when a rebuilt model names its layers otherwise.
        **kwargs: `name`, `trainable`.

    Example:

    >>> import keras, kprune
    >>> class Block(keras.Model):
    ...     def __init__(self, units=8, **kwargs):
    ...         inputs = keras.Input((4,))
    ...         x = keras.layers.Dense(units, name="hidden")(inputs)
    ...         super().__init__(inputs, keras.layers.Dense(2, name="out")(x), **kwargs)
    ...         self.units = units
    ...     def get_config(self):
    ...         return {"units": self.units, "name": self.name}
    >>> small = kprune.surgery.remove_units(Block(), {"hidden": [0, 1]})
    >>> type(small).__name__, small.get_layer("hidden").units
    ('PrunedModel', 6)
    """

    def __init__(self, base, changes, _built=None, **kwargs):
        if _built is None:
            original = keras.saving.deserialize_keras_object(base)
            replayer = _Replayer(changes)
            replayer.index(original)
            _built = clone_model(
                original,
                compile=False,
                input_tensors=input_tensors(original),
                clone_function=replayer,
            )
        kwargs.setdefault("name", _built.name)
        super().__init__(inputs=_built.input, outputs=_built.output, **kwargs)
        self._base = base
        self._changes = changes

    def get_config(self):
        for path, record in self._changes.items():
            if "unsaveable" in record:
                raise ValueError(
                    f"Layer '{path}' of the pruned model cannot be saved: "
                    f"{record['unsaveable']}. The model runs and exports to "
                    "TFLite; save its weights with model.save_weights()."
                )
        return {
            "name": self.name,
            "trainable": self.trainable,
            "base": self._base,
            "changes": self._changes,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

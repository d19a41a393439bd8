"""`SizeTarget`: raise the group-sparsity strength until the slimmed model
meets a MACs / parameter target, then train at that size."""

import keras
import numpy as np
from keras import ops

from kprune._backend import bakes_variables, retrace, sync_weights
from kprune.callbacks._order import sibling_callbacks
from kprune.callbacks._unit_groups import UnitGroups
from kprune.constraints.group_soft_threshold import is_group_constraint
from kprune.ops.group_sparsity import group_norms, group_size, unit_axes
from kprune.regularizers.coupling import coupled_units
from kprune.regularizers.targets import (
    constraint_slot,
    default_slot,
    group_regularizers,
    iter_layers,
    partner_variables,
    regularized_targets,
)

_ATTRS = (
    "kernel_regularizer",
    "depthwise_regularizer",
    "pointwise_regularizer",
    "kernel_constraint",
    "depthwise_constraint",
    "pointwise_constraint",
)
_ON_TARGET = ("freeze", "hold")


def has_strength(obj):
    """Whether `obj` has a `strength` attribute that is a `keras.Variable`."""
    return isinstance(getattr(obj, "strength", None), keras.Variable)


def strength_objects(model):
    """Every regularizer / constraint of `model` with a `strength` Variable.

    Args:
        model: a `keras.Model`.

    Returns:
        A list of objects, each once.

    Example:

    >>> import keras, kprune
    >>> reg = kprune.regularizers.GroupLasso(1e-3)
    >>> model = keras.Sequential([keras.Input((4,)),
    ...     keras.layers.Dense(3, kernel_regularizer=reg)])
    >>> strength_objects(model) == [reg]
    True
    """
    found, seen = [], set()

    def add(obj):
        if has_strength(obj) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(obj)

    for _, regularizer in group_regularizers(model):
        add(regularizer)
    for layer in model._flatten_layers(include_self=False):
        for attr in _ATTRS:
            add(getattr(layer, attr, None))
    return found


class _Units:
    """The output units of one kernel under a controlled strength: their
    exact-zero test, their frozen mask (a non-trainable `keras.Variable`,
    1 = live) and their one-prox score `||theta_n|| / (scale * sqrt(P))`.
    `vectors` are the per-unit variables of the groups (the bias, a
    BatchNorm's `gamma` / `beta`): they die and come back with the unit."""

    def __init__(self, layer, kernel, vectors, axis, scale, min_units):
        self.layer, self.kernel, self.axis = layer, kernel, axis
        self.vectors = list(vectors)
        self.scale = float(scale)
        shape = tuple(kernel.shape)
        axes = unit_axes(len(shape), axis)
        self.units = int(np.prod([shape[i] for i in axes]))
        self.shape = [d if i in axes else 1 for i, d in enumerate(shape)]
        self.root = float(np.sqrt(group_size(shape, axis) + len(self.vectors)))
        self.floor = max(1, int(np.ceil(min_units * self.units)))
        self.keep = keras.Variable(
            np.ones(self.units, "float32"),
            trainable=False,
            name=f"size_target_keep_{layer.name}",
        )

    def norms(self):
        return _norms_np(self.kernel, self.vectors, self)

    def live(self):
        return ops.convert_to_numpy(self.keep) > 0

    def freeze(self, dead):
        """Mark `dead` (bool per unit) as removed and zero every removed unit."""
        keep = self.live() & ~np.asarray(dead, bool)
        self.keep.assign(keep.astype("float32"))
        self.zero()

    def values(self):
        """NumPy copies of the kernel and of the per-unit vectors (a list)."""
        vectors = [ops.convert_to_numpy(v).copy() for v in self.vectors]
        return ops.convert_to_numpy(self.kernel).copy(), vectors

    def revive(self, units, kernel, vectors):
        """Give `units` (bool per unit) back their weights from `kernel` /
        `vectors`."""
        units = np.asarray(units, bool)
        keep = self.live() | units
        self.keep.assign(keep.astype("float32"))
        now = ops.convert_to_numpy(self.kernel)
        self.kernel.assign(np.where(units.reshape(self.shape), kernel, now))
        for variable, saved in zip(self.vectors, vectors or ()):
            now = ops.convert_to_numpy(variable)
            variable.assign(np.where(units, saved, now))

    def zero(self):
        if self.live().all():
            return
        mask = ops.cast(self.keep, self.kernel.dtype)
        self.kernel.assign(self.kernel * ops.reshape(mask, self.shape))
        for variable in self.vectors:
            variable.assign(variable * ops.cast(self.keep, variable.dtype))


def _norms_np(kernel, vectors, units):
    vectors = list(vectors or ())
    return ops.convert_to_numpy(group_norms(kernel, units.axis, None, partners=vectors))


def _units_of(model, controlled, min_units):
    """A `_Units` per kernel whose group regularizer / constraint is controlled."""
    wanted = {id(obj) for obj in controlled}
    found = []
    for layer in iter_layers(model):
        for target in regularized_targets(layer, model):
            reg = target.regularizer
            if id(reg) in wanted:
                scale = getattr(reg, "scale", 1.0)
                found.append(
                    _Units(
                        layer,
                        target.kernel,
                        target.vectors(),
                        target.axis,
                        scale,
                        min_units,
                    )
                )
        attr = constraint_slot(layer)
        constraint = getattr(layer, attr, None) if attr else None
        if is_group_constraint(constraint) and id(constraint) in wanted:
            kernel = getattr(layer, default_slot(layer)[0])
            bias = getattr(layer, "bias", None) if constraint.include_bias else None
            units = int(
                np.prod(
                    [
                        kernel.shape[i]
                        for i in unit_axes(len(kernel.shape), constraint.axis)
                    ]
                )
            )
            if bias is not None and tuple(bias.shape) != (units,):
                bias = None
            vectors = [] if bias is None else [bias]
            vectors += list(partner_variables(model, layer, constraint.partners))
            found.append(
                _Units(
                    layer, kernel, vectors, constraint.axis, constraint.scale, min_units
                )
            )
    return found


@keras.saving.register_keras_serializable(package="kprune")
class SizeTarget(keras.callbacks.Callback):
    """Raise the group-sparsity strength until the slimmed model is small enough.

    A controller on the strength of kprune's group sparsity, so that a user
    chooses a size (`macs=0.25`: a quarter of the MACs), not a strength. It
    runs at every *check*: right after each proximal step of a
    `kprune.callbacks.ProximalStep` listed before it, or, without one (the
    `GroupSoftThreshold` constraints of `apply_group_sparsity(...,
    method="constraint")` shrink inside every optimizer step), every
    `every_n_steps` optimizer steps; and at every epoch end. At a check:

    1. **Freeze.** Units whose group (kernel slice, bias and the
       BatchNorm `gamma` / `beta` joined to it) is exactly zero
       are recorded in a 0/1 mask (a non-trainable `keras.Variable` per
       layer) and set back to zero at every later check and at the end of
       `fit`: a unit that the optimizer would regrow (Adam moves a zero
       weight by about `lr` per step) stays removed, so the size only goes
       down. A layer always keeps its best `ceil(min_units * width)` units
       (they come back with their weights of the previous check).
    2. **Measure.** When units died, `ratio = size(kprune.surgery.slim(
       model)) / size(model at train start)`, size being the MACs or
       parameters of `kprune.report.summary`.
    3. **Land.** If the new deaths took the ratio below the target, only
       the weakest of them stay dead (by their norm at the previous check,
       relative to the best unit of their layer; a bisection on the slimmed
       size), the others get back their weights of the previous check: the
       ratio lands just under the target.
    4. **Control.** While `ratio > target`, the strength of every controlled
       object grows at each check where no unit died, and is held while
       units are dying:

           strength <- strength * growth   (strength 0: <- `initial`)

    5. **Hold the size.** Once `ratio <= target` the target is reached for
       good. With `on_target="freeze"` (default) every controlled strength
       is set to 0: the surviving units train on without shrinkage and the
       removed ones stay zero, so the model trains at that size. With
       `on_target="hold"` the strength is kept (more units may die: the
       size can only go further down). With `rewind=True`, every weight of
       the model then goes back to its value at the start of `fit`, the
       removed units zero: group Lasso chose the units, and the kept ones
       train on from their unshrunk weights (weight rewinding, Renda et al.
       2020), for a model that was trained before `fit`.

    If `fit` ends above the target and `finish=True`, the live units with
    the smallest norm relative to their layer's best are zeroed, fewest
    first, until `slim` meets the target (`finished_units` counts them): a
    magnitude cut the model was not trained with, so fine-tune afterwards.
    The cut keeps the `min_units` floor too; where the target cannot be met
    above it, every unit above the floor is cut and `reached` stays False.
    Fitting in several `fit` calls, pass `finish=False` to all but the last.

    Coupled units (`coupled=True`, default): a unit whose channel other
    layers make too (the convs a residual `Add` joins, a depthwise conv and
    the conv before it) is dead only when its whole group is zero in every
    one of them, and a group that cannot leave the model (also made by a
    layer without group sparsity, or pinned) never is: only units `slim`
    removes count, are frozen, given back or cut, and always together
    (`kprune.regularizers.coupling.coupled_units`). A unit zero in one of
    those layers only gets its weights of the last check back: it cannot
    leave the model alone. With per-layer groups (the constraints,
    `ProximalStep()`) a residual channel thus leaves only when every
    layer's slice dies at once; `ProximalStep(coupled=True)` shrinks it as
    one group.

    Controlled objects: every regularizer / constraint of the model whose
    `strength` is a `keras.Variable` (kprune's `GroupLasso`,
    `SparseGroupLasso`, `GroupSoftThreshold`, `SparseGroupSoftThreshold`),
    or the `objects` given; units are frozen in the layers of kprune's group
    regularizers / constraints among them. Units must become *exactly* zero
    for `slim` to remove them: use proximal mode (`ProximalStep`) or the
    constraints, not a penalty. A single strength does not know the MACs of
    each layer's units (group Lasso removes units where `sqrt(P)` is large
    first), so at large reductions the floor `min_units` shapes the widths.

    Logs (every epoch) `size_ratio` (the slimmed model's ratio),
    `reg_strength` (the controlled strength now), `size_target_strength`
    (the strength at which the target was reached, else the current one)
    and `size_target_reached` (0/1).

    Args:
        macs: target fraction of the MACs, in (0, 1].
        params: target fraction of the parameters, in (0, 1].
        growth: factor applied to the strength at a check that found no new
            zero unit while above the target (> 1).
        initial: strength used when the current one is 0 (> 0).
        every_n_steps: optimizer steps between checks when no `ProximalStep`
            is listed before this callback (>= 1).
        on_target: `"freeze"` or `"hold"` (see above).
        finish: at the end of `fit`, zero the weakest units if the target
            was not reached.
        min_units: fraction of each layer's units that always stays, in
            [0, 1) (at least one unit stays).
        rewind: once the target is reached, reset every weight to its value
            at the start of `fit` (removed units zero).
        objects: optional list of objects with a `strength` Variable (default:
            every regularizer / constraint of the model that has one).
        input_shape: passed to `kprune.report.summary` (models built on
            unknown dimensions).
        coupled: decide per group of coupled units (see above), not per
            unit.

    Example:

    >>> import keras, numpy as np, kprune, kprune.sparsity
    >>> keras.utils.set_random_seed(0)
    >>> model = keras.Sequential([keras.Input((8,)),
    ...     keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
    >>> model = kprune.sparsity.apply_group_sparsity(
    ...     model, strength=0.1, method="constraint")
    >>> model.compile(keras.optimizers.Adam(1e-2), "mse")
    >>> target = kprune.callbacks.SizeTarget(macs=0.5, growth=2.0)
    >>> x = np.random.default_rng(0).random((64, 8)).astype("float32")
    >>> history = model.fit(x, x[:, :2], epochs=4, batch_size=8, verbose=0,
    ...     callbacks=[target])
    >>> history.history["size_target_reached"][-1]
    1
    >>> small = kprune.surgery.slim(model)
    >>> ratio = (kprune.report.summary(small)["macs"]
    ...     / kprune.report.summary(model)["macs"])
    >>> bool(ratio <= 0.5)
    True

    Reference:
        Alvarez & Salzmann, "Learning the Number of Neurons in Deep
        Networks", NeurIPS 2016 (arXiv 1611.06321), for the proximal group
        Lasso; Renda, Frankle & Carbin, "Comparing Rewinding and
        Fine-tuning in Neural Network Pruning", ICLR 2020 (arXiv
        2003.02389), for `rewind`; the size controller is kprune's.
    """

    def __init__(
        self,
        macs=None,
        params=None,
        growth=1.5,
        initial=1e-5,
        every_n_steps=5,
        on_target="freeze",
        finish=True,
        min_units=0.1,
        rewind=False,
        objects=None,
        input_shape=None,
        coupled=True,
    ):
        super().__init__()
        given = [(k, v) for k, v in (("macs", macs), ("params", params)) if v]
        if len(given) != 1:
            raise ValueError(
                "SizeTarget needs exactly one of macs= or params= (a fraction "
                f"in (0, 1]). Received: macs={macs!r}, params={params!r}"
            )
        self.metric, self.target = given[0][0], float(given[0][1])
        if not 0.0 < self.target <= 1.0:
            raise ValueError(
                f"The target is a fraction in (0, 1]. Received: "
                f"{self.metric}={self.target!r}"
            )
        if not float(growth) > 1.0:
            raise ValueError(f"`growth` must be > 1. Received: growth={growth!r}")
        if not float(initial) > 0.0:
            raise ValueError(f"`initial` must be > 0. Received: initial={initial!r}")
        if isinstance(every_n_steps, bool) or int(every_n_steps) < 1:
            raise ValueError(
                "`every_n_steps` must be an int >= 1. "
                f"Received: every_n_steps={every_n_steps!r}"
            )
        if not 0.0 <= float(min_units) < 1.0:
            raise ValueError(
                "`min_units` is the fraction of a layer's units that always "
                f"stays, in [0, 1). Received: min_units={min_units!r}"
            )
        if on_target not in _ON_TARGET:
            raise ValueError(
                f"`on_target` must be one of {_ON_TARGET}. "
                f"Received: on_target={on_target!r}"
            )
        if objects is not None:
            bad = [o for o in objects if not has_strength(o)]
            if bad:
                raise ValueError(
                    "Every object in `objects` needs a `strength` attribute that "
                    f"is a keras.Variable. Received: {bad[0]!r}"
                )
        self.growth = float(growth)
        self.initial = float(initial)
        self.every_n_steps = int(every_n_steps)
        self.on_target = on_target
        self.finish = bool(finish)
        self.min_units = float(min_units)
        self.rewind = bool(rewind)
        self.objects = objects
        self.input_shape = input_shape
        self.coupled = bool(coupled)
        self._groups = None
        # State that changes during training, as Keras variables.
        self._reached = keras.Variable(0, dtype="int32", trainable=False)
        self._held = keras.Variable(0.0, dtype="float32", trainable=False)
        self._controlled = None
        self._units = []
        self._base = None
        self._snapshot = None
        self._start = None
        self._prox = None
        self._prox_seen = None
        self._step = 0
        self.ratio = None
        self.finished_units = 0

    # -- state -------------------------------------------------------------

    @property
    def reached(self):
        """Whether the target has been reached (a bool)."""
        return bool(ops.convert_to_numpy(self._reached))

    def strength(self):
        """The (first) controlled strength, as a float (None before `fit`)."""
        if not self._controlled:
            return None
        return float(ops.convert_to_numpy(self._controlled[0].strength))

    def _size(self, model):
        from kprune.report.summary import summary

        return float(summary(model, input_shape=self.input_shape)[self.metric])

    def _slim_ratio(self):
        from kprune.surgery.rebuild import slim

        return self._size(slim(self.model)) / self._base

    def _set_strengths(self, fn):
        for obj in self._controlled:
            value = float(ops.convert_to_numpy(obj.strength))
            obj.strength.assign(np.float32(fn(value)))
        if bakes_variables():
            retrace(self.model)

    # -- hooks -------------------------------------------------------------

    def set_model(self, model):
        """Find a `ProximalStep` listed before this callback (checked then)."""
        super().set_model(model)
        from kprune.callbacks.proximal_step import ProximalStep

        self._prox = None
        callbacks = sibling_callbacks(self) or []
        for other in callbacks:
            if other is self:
                break
            if isinstance(other, ProximalStep):
                self._prox = other
        later = [c for c in callbacks if isinstance(c, ProximalStep)]
        if later and self._prox is None:
            names = [type(c).__name__ for c in callbacks]
            raise ValueError(
                "SizeTarget must come after ProximalStep in `callbacks`: it "
                "checks the size right after each proximal step (the only "
                "moment the units it zeroed are exactly zero). "
                f"Received: callbacks={names}"
            )

    def on_train_begin(self, logs=None):
        controlled = self.objects or strength_objects(self.model)
        if not controlled:
            raise ValueError(
                f"SizeTarget found nothing with a `strength` keras.Variable in "
                f"model '{self.model.name}': use kprune.sparsity."
                "apply_group_sparsity, kprune.regularizers.GroupLasso or pass "
                "objects=[...]. Received: objects=None"
            )
        self._controlled = controlled
        units = _units_of(self.model, controlled, self.min_units)
        if self._units and [u.kernel for u in self._units] == [u.kernel for u in units]:
            units = self._units  # a second `fit`: keep the frozen masks
        self._units = units
        coupling = coupled_units(self.model, units) if self.coupled else None
        self._groups = UnitGroups([u.units for u in units], coupling)
        if self._base is None:
            self._base = self._size(self.model)
        self._snapshot = [u.values() for u in units]
        if self.rewind and self._start is None:
            self._start = [np.array(w) for w in self.model.get_weights()]
        self._prox_seen = None if self._prox is None else self._prox.applications
        self._step = 0
        if self.ratio is None:
            self.ratio = 1.0

    def on_train_batch_begin(self, batch, logs=None):
        if self._prox is not None:
            if self._prox.applications != self._prox_seen:
                self._check()
        else:
            self._step += 1
            if self._step % self.every_n_steps == 0:
                self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()
        if logs is not None:
            logs["size_ratio"] = self.ratio
            logs["reg_strength"] = self.strength()
            reached = self.reached
            logs["size_target_strength"] = (
                float(ops.convert_to_numpy(self._held)) if reached else self.strength()
            )
            logs["size_target_reached"] = int(reached)

    def on_train_end(self, logs=None):
        sync_weights(self.model)
        for units in self._units:
            units.zero()
        if self.finish and not self.reached:
            self._finish()

    # -- the controller ------------------------------------------------------

    def _check(self):
        if self._prox is not None:
            self._prox_seen = self._prox.applications
        sync_weights(self.model)
        groups = self._groups
        zero = [u.live() & (u.norms() == 0.0) for u in self._units]
        # A unit is dead when its whole group is zero (coupled units: in
        # every layer), and its group can leave the model. A unit zero in
        # one layer only (a per-layer constraint zeroed one branch of a
        # residual channel) cannot leave the model alone: it gets its
        # weights of the last check back, so that the slimmed size measured
        # below is the size the frozen units give.
        new = groups.complete(zero)
        for units, z, dead, (kernel, vectors) in zip(
            self._units, zero, new, self._snapshot
        ):
            if (z & ~dead).any():
                units.revive(z & ~dead, kernel, vectors)
        scores = {}

        def score(i):
            if i not in scores:
                kernel, vectors = self._snapshot[i]
                scores[i] = _norms_np(kernel, vectors, self._units[i])
            return scores[i]

        # The floor: a layer keeps its best `min_units` (they come back, with
        # every unit of their groups, with their weights of the last check).
        back = [np.zeros(u.units, bool) for u in self._units]
        changed = True
        while changed:
            changed = False
            for i, units in enumerate(self._units):
                spare = max(int(units.live().sum()) - units.floor, 0)
                if new[i].sum() <= spare:
                    continue
                candidates = np.flatnonzero(new[i])
                weakest = candidates[np.argsort(score(i)[candidates], kind="stable")]
                keep = np.zeros(units.units, bool)
                keep[weakest[spare:]] = True
                for k, extra in enumerate(groups.spread(i, keep)):
                    back[k] |= extra & new[k]
                    new[k] &= ~extra
                changed = True
        for units, revive, (kernel, vectors) in zip(self._units, back, self._snapshot):
            if revive.any():
                units.revive(revive, kernel, vectors)
        for units, dead in zip(self._units, new):
            if not dead.any():
                units.zero()
        died = any(d.any() for d in new)
        if self.reached:
            for units, dead in zip(self._units, new):
                if dead.any():
                    units.freeze(dead)
            if died:
                self.ratio = self._slim_ratio()
            return
        if died:
            self._land(new)
        elif not self._units:
            self.ratio = self._slim_ratio()
        if self.ratio <= self.target:
            self._reached.assign(1)
            self._held.assign(np.float32(self.strength()))
            if self.on_target == "freeze":
                self._set_strengths(lambda value: 0.0)
            if self.rewind and self._start is not None:
                self.model.set_weights(self._start)
                for units in self._units:
                    units.zero()
        elif not died:
            growth, initial = self.growth, self.initial
            self._set_strengths(lambda v: v * growth if v > 0 else initial)
        self._snapshot = [u.values() for u in self._units]

    def _land(self, new):
        """Freeze the units that died since the last check; where that
        overshoots the target, only the weakest of their groups (by their
        score at the last check) and give the others back their weights
        from then."""
        for units, dead in zip(self._units, new):
            if dead.any():
                units.freeze(dead)
        self.ratio = self._slim_ratio()
        if self.ratio >= self.target or self._snapshot is None:
            return
        # Overshoot: bring back the strongest of the new dead groups.
        scores = []
        for units, (kernel, vectors) in zip(self._units, self._snapshot):
            score = _norms_np(kernel, vectors, units)
            scores.append(score / max(float(score.max()), 1e-12))  # 1: the best
        order = self._groups.ranked(new, scores)

        def give_back(k):
            """The `k` weakest new dead groups stay dead, the others live
            again with their weights of the last check."""
            revived = self._groups.members(order[k:])
            for units, dead, revive, (kernel, vectors) in zip(
                self._units, new, revived, self._snapshot
            ):
                units.freeze(dead)
                units.revive(revive & dead, kernel, vectors)
            return self._slim_ratio()

        lo, hi = 0, len(order)  # all dead meets the target; none dead does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if give_back(mid) <= self.target:
                hi = mid
            else:
                lo = mid
        self.ratio = give_back(hi)

    def _finish(self):
        """Zero the weakest live groups until the slimmed model meets the
        target (each layer keeps its best `min_units`: the target may stay
        unmet)."""
        saved = [u.values() for u in self._units]
        masks, scores, protected = [], [], []
        for units, (kernel, vectors) in zip(self._units, saved):
            live = units.live()
            if units.scale <= 0.0:  # an unregularized layer keeps its units
                masks.append(np.zeros(units.units, bool))
                scores.append(np.zeros(units.units))
                protected.append(np.ones(units.units, bool))
                continue
            score = _norms_np(kernel, vectors, units) / (units.scale * units.root)
            best = np.flatnonzero(live)
            best = best[np.argsort(-score[best], kind="stable")][: units.floor]
            floor = np.zeros(units.units, bool)
            floor[best] = True  # the layer's best `floor` units are never cut
            masks.append(live)
            scores.append(score)
            protected.append(floor)
        order = self._groups.ranked(masks, scores, exclude=protected)
        before = [~u.live() for u in self._units]

        def cut(k):
            """The `k` weakest groups zeroed, the others as they were."""
            chosen = self._groups.members(order[:k])
            for units, was, extra, (kernel, vectors) in zip(
                self._units, before, chosen, saved
            ):
                units.revive(~was, kernel, vectors)
                units.freeze(was | extra)
            return self._slim_ratio()

        lo, hi = 0, len(order)
        if cut(hi) <= self.target:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if cut(mid) <= self.target:
                    hi = mid
                else:
                    lo = mid
        self.ratio = cut(hi)
        self.finished_units = int(
            sum(m.sum() for m in self._groups.members(order[:hi]))
        )
        self._reached.assign(int(self.ratio <= self.target))

    # -- serialization ---------------------------------------------------

    def get_config(self):
        return {
            "macs": self.target if self.metric == "macs" else None,
            "params": self.target if self.metric == "params" else None,
            "growth": self.growth,
            "initial": self.initial,
            "every_n_steps": self.every_n_steps,
            "on_target": self.on_target,
            "finish": self.finish,
            "min_units": self.min_units,
            "rewind": self.rewind,
            "input_shape": self.input_shape,
            "coupled": self.coupled,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

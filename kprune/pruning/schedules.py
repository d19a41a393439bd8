"""Sparsity schedules: step -> target sparsity, and when to prune.

A sparsity schedule is a `keras.optimizers.schedules.LearningRateSchedule`
whose value is read as a fraction of pruned weights instead of a learning
rate. `MagnitudePruning` accepts these, any Keras `LearningRateSchedule`, or
any plain callable `f(step) -> sparsity` (or `f(epoch)` with
`schedule_unit="epoch"`). Schedules shipped here also say *when* to prune
(`should_prune(step)`); for other callables the callback prunes every
`frequency` steps.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kprune")
class SparsitySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base class: `__call__(step)` gives the target sparsity at `step`.

    Subclasses implement `__call__` (with `keras.ops`, so that a tensor step
    works too) and `should_prune(step)` (Python ints), and `get_config`.

    Args:
        begin_step: first step at which pruning happens.
        end_step: last step at which pruning happens (-1: never stops).
        frequency: prune every `frequency` steps between the two.

    Example:

    >>> ConstantSparsity(0.9, begin_step=10).should_prune(10)
    True
    """

    def __init__(self, begin_step=0, end_step=-1, frequency=100):
        begin_step = int(begin_step)
        end_step = int(end_step)
        frequency = int(frequency)
        if begin_step < 0:
            raise ValueError(
                f"`begin_step` must be >= 0. Received: begin_step={begin_step}"
            )
        if end_step != -1 and end_step < begin_step:
            raise ValueError(
                "`end_step` must be -1 or >= `begin_step`. "
                f"Received: end_step={end_step}, begin_step={begin_step}"
            )
        if frequency < 1:
            raise ValueError(
                f"`frequency` must be >= 1. Received: frequency={frequency}"
            )
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency

    def should_prune(self, step):
        """Whether a pruning event happens at integer `step`.

        True at `begin_step`, every `frequency` steps after it, and at
        `end_step` itself (so the final sparsity is reached exactly there).
        """
        step = int(step)
        if step < self.begin_step:
            return False
        if self.end_step != -1 and step > self.end_step:
            return False
        if step == self.end_step:
            return True
        return (step - self.begin_step) % self.frequency == 0

    def get_config(self):
        return {
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


def _check_fraction(name, value):
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value}")
    return value


@keras.saving.register_keras_serializable(package="kprune")
class ConstantSparsity(SparsitySchedule):
    """The same target sparsity from `begin_step` on.

    `s(t) = sparsity` for `t >= begin_step`, 0 before.

    Args:
        sparsity: target fraction of pruned weights in [0, 1).
        begin_step: first pruning step.
        end_step: last pruning step (-1: prune every `frequency` steps forever;
            re-pruning to the same target is a no-op, since pruned weights
            stay at zero).
        frequency: steps between pruning events.

    Example:

    >>> s = ConstantSparsity(0.75, begin_step=100)
    >>> float(s(50)), float(s(100))
    (0.0, 0.75)
    """

    def __init__(self, sparsity, begin_step=0, end_step=-1, frequency=100):
        super().__init__(begin_step, end_step, frequency)
        self.sparsity = _check_fraction("sparsity", sparsity)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        return ops.where(
            ops.greater_equal(step, float(self.begin_step)),
            ops.cast(self.sparsity, "float32"),
            ops.cast(0.0, "float32"),
        )

    def get_config(self):
        return {"sparsity": self.sparsity, **super().get_config()}


@keras.saving.register_keras_serializable(package="kprune")
class PolynomialDecay(SparsitySchedule):
    """Gradual pruning: sparsity rises from `s_i` to `s_f` along a polynomial.

    `s(t) = s_f + (s_i - s_f) * (1 - p)^power`, with
    `p = clip((t - begin_step) / (end_step - begin_step), 0, 1)`,
    and 0 before `begin_step`. With `power=3` this is the schedule of Zhu &
    Gupta: prune fast while the network is redundant, slowly near the end.

    Args:
        initial_sparsity: `s_i`, sparsity at `begin_step`, in [0, 1).
        final_sparsity: `s_f`, sparsity at and after `end_step`, in [0, 1).
        begin_step: step at which pruning starts.
        end_step: step at which `final_sparsity` is reached (> begin_step).
        power: exponent of the polynomial (3 in the paper).
        frequency: steps between pruning events (also prunes at `end_step`).

    Example:

    >>> s = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100)
    >>> round(float(s(50)), 4), round(float(s(100)), 4)
    (0.7875, 0.9)

    Reference:
        Zhu, Gupta. To prune, or not to prune: exploring the efficacy of
        pruning for model compression. arXiv 1710.01878, 2017.
    """

    def __init__(
        self,
        initial_sparsity,
        final_sparsity,
        begin_step,
        end_step,
        power=3,
        frequency=100,
    ):
        if int(end_step) == -1:
            raise ValueError(
                "`end_step` must be a step after `begin_step`. "
                f"Received: end_step={end_step}"
            )
        super().__init__(begin_step, end_step, frequency)
        if self.end_step <= self.begin_step:
            raise ValueError(
                "`end_step` must be greater than `begin_step`. "
                f"Received: end_step={end_step}, begin_step={begin_step}"
            )
        self.initial_sparsity = _check_fraction("initial_sparsity", initial_sparsity)
        self.final_sparsity = _check_fraction("final_sparsity", final_sparsity)
        self.power = float(power)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        span = float(self.end_step - self.begin_step)
        p = ops.clip((step - float(self.begin_step)) / span, 0.0, 1.0)
        s_i = ops.cast(self.initial_sparsity, "float32")
        s_f = ops.cast(self.final_sparsity, "float32")
        value = s_f + (s_i - s_f) * ops.power(1.0 - p, self.power)
        return ops.where(
            ops.greater_equal(step, float(self.begin_step)),
            value,
            ops.cast(0.0, "float32"),
        )

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "power": self.power,
            **super().get_config(),
        }

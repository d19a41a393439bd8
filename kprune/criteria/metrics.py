"""Metrics of many ablated copies of a model at once (accuracy, metric, loss).

A *metric spec* says how to measure one model run and which way is better;
an *accumulator* measures several ablated runs side by side, data chunk by
data chunk. `importance(base, ablated, higher_is_better)` turns the two
measurements into an importance score that is always "higher = removing the
unit hurts more":

    importance = base - ablated      if higher is better (accuracy: CAR)
    importance = ablated - base      if lower is better (a loss: RAR)
"""

import dataclasses

import keras
import numpy as np

_ACCURACY_NAMES = ("accuracy", "acc")


def importance(base, ablated, higher_is_better=True):
    """Importance of what was removed: how much worse the metric got.

    `base - ablated` when higher values are better (CAR: the accuracy drop),
    `ablated - base` when lower values are better (RAR with a loss: the loss
    increase). Either way, higher = more important.

    Args:
        base: the metric of the model with nothing (more) removed.
        ablated: the metric with the unit removed (scalar or array).
        higher_is_better: direction of the metric.

    Returns:
        A NumPy float64 array (or scalar) of importances.

    Example:

    >>> float(importance(0.98, 0.91))
    0.07
    >>> float(importance(0.20, 0.35, higher_is_better=False))
    0.15
    """
    base = np.float64(base)
    ablated = np.asarray(ablated, dtype=np.float64)
    result = base - ablated if higher_is_better else ablated - base
    return np.round(result, 12)


def classification_hits(y_true, y_pred):
    """Per-sample correctness of predictions (the accuracy numerator).

    `y_pred` of shape `(..., n, k)`: the predicted class is `argmax` over the
    last axis; `k == 1` is binary with a 0.5 threshold (probabilities).
    `y_true` holds integer labels `(n,)` / `(n, 1)` or one-hot rows `(n, k)`.

    Args:
        y_true: labels for `n` samples.
        y_pred: predictions, with any number of leading (ablation) axes.

    Returns:
        A boolean array of shape `y_pred.shape[:-1]`.

    Example:

    >>> classification_hits(np.array([1, 0]), np.array([[0.2, 0.8], [0.4, 0.6]]))
    array([ True, False])
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    n = y_pred.shape[-2] if y_pred.ndim >= 2 else y_pred.shape[-1]
    if y_pred.ndim >= 2 and y_pred.shape[-1] == 1:
        predicted = y_pred[..., 0] > 0.5
        truth = y_true.reshape(n) > 0.5
        return predicted == truth
    predicted = np.argmax(y_pred, axis=-1)
    if y_true.ndim >= 2 and y_true.shape[-1] == y_pred.shape[-1] > 1:
        truth = np.argmax(y_true, axis=-1)
    else:
        truth = y_true.reshape(n).astype(np.int64)
    return predicted == truth


def classification_margins(y_true, y_pred):
    """Per-sample margin of the true class over the best other class.

    `margin = z_true - max_{j != true} z_j` on the model's outputs `z`
    (logits or probabilities); for one output unit, `(z - 0.5)` signed by
    the label. Positive = correctly classified. A finer-grained companion of
    accuracy, used to break ties between equal CAR scores.

    Args:
        y_true: labels for `n` samples (integer or one-hot).
        y_pred: predictions `(..., n, k)`.

    Returns:
        A float64 array of shape `y_pred.shape[:-1]`.

    Example:

    >>> classification_margins(np.array([1]), np.array([[0.2, 0.7, 0.1]]))
    array([0.5])
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    n = y_pred.shape[-2]
    if y_pred.shape[-1] == 1:
        sign = np.where(y_true.reshape(n) > 0.5, 1.0, -1.0)
        return sign * (y_pred[..., 0] - 0.5)
    if y_true.ndim >= 2 and y_true.shape[-1] == y_pred.shape[-1] > 1:
        truth = np.argmax(y_true, axis=-1)
    else:
        truth = y_true.reshape(n).astype(np.int64)
    index = np.broadcast_to(truth[:, None], y_pred.shape[:-1] + (1,))
    true_score = np.take_along_axis(y_pred, index, axis=-1)[..., 0]
    others = y_pred.copy()
    np.put_along_axis(others, index, -np.inf, axis=-1)
    return true_score - others.max(axis=-1)


@dataclasses.dataclass
class MetricSpec:
    """How to measure a run: a kind, the object, and its direction.

    Attributes:
        kind: "accuracy", "metric" (a `keras.metrics.Metric`) or "loss"
            (a `keras.losses.Loss` or a callable `fn(y_true, y_pred)`).
        obj: the metric/loss object (None for accuracy).
        higher_is_better: direction of the value.
        name: a readable name.
    """

    kind: str
    obj: object
    higher_is_better: bool
    name: str

    def accumulator(self, count):
        """A fresh accumulator for `count` runs side by side."""
        if self.kind == "accuracy":
            return _AccuracyAccumulator(count)
        if self.kind == "metric":
            return _MetricAccumulator(self.obj, count)
        return _LossAccumulator(self.obj, count)


def resolve_metric(metric, higher_is_better=None):
    """Turn `metric` into a `MetricSpec`.

    Args:
        metric: "accuracy" (default of the criteria), a `keras.metrics.Metric`
            instance or name, a `keras.losses.Loss` instance or name
            prefixed with "loss:" (e.g. "loss:mse"), or a callable
            `fn(y_true, y_pred)` (treated as a loss, lower is better).
        higher_is_better: override the direction (None: a Keras metric's own
            direction, up for accuracy, down for losses and callables).

    Returns:
        A `MetricSpec`.

    Example:

    >>> resolve_metric("accuracy").higher_is_better
    True
    >>> resolve_metric(keras.losses.MeanSquaredError()).higher_is_better
    False
    """
    if isinstance(metric, str) and metric.lower() in _ACCURACY_NAMES:
        spec = MetricSpec("accuracy", None, True, "accuracy")
    elif isinstance(metric, str) and metric.startswith("loss:"):
        loss = keras.losses.get(metric[len("loss:") :])
        spec = MetricSpec("loss", loss, False, metric)
    elif isinstance(metric, str):
        try:
            obj = keras.metrics.get(metric)
        except ValueError:
            raise ValueError(
                f"Unknown metric name. Use 'accuracy', a Keras metric name, "
                f"'loss:<keras loss name>', or an object. Received: metric={metric!r}"
            ) from None
        if isinstance(obj, keras.metrics.Metric):
            spec = MetricSpec("metric", obj, _metric_direction(obj), metric)
        else:  # keras.metrics.get returns plain functions for e.g. "mse"
            spec = MetricSpec("loss", obj, False, metric)
    elif isinstance(metric, keras.metrics.Metric):
        spec = MetricSpec("metric", metric, _metric_direction(metric), metric.name)
    elif isinstance(metric, keras.losses.Loss) or callable(metric):
        name = getattr(metric, "name", None) or getattr(metric, "__name__", "loss")
        spec = MetricSpec("loss", metric, False, name)
    else:
        raise ValueError(
            "`metric` must be 'accuracy', a keras.metrics.Metric, a "
            "keras.losses.Loss, or a callable fn(y_true, y_pred). "
            f"Received: metric={metric!r}"
        )
    if higher_is_better is not None:
        spec.higher_is_better = bool(higher_is_better)
    return spec


def _metric_direction(metric):
    # Keras 3 metrics record "up" (accuracy, AUC) or "down" (MSE, crossentropy).
    return getattr(metric, "_direction", "up") != "down"


class _AccuracyAccumulator:
    def __init__(self, count):
        self.hits = np.zeros(count, dtype=np.int64)
        self.margins = np.zeros(count, dtype=np.float64)
        self.total = 0

    def update(self, y_true, y_pred):
        """`y_pred` of shape (count, n, ...): one slice per run."""
        self.hits += classification_hits(y_true, y_pred).sum(axis=-1)
        self.margins += classification_margins(y_true, y_pred).sum(axis=-1)
        self.total += y_pred.shape[1]

    def result(self):
        return self.hits / max(self.total, 1)

    def secondary(self):
        """Mean classification margin per run (breaks ties of accuracy)."""
        return self.margins / max(self.total, 1)


class _MetricAccumulator:
    def __init__(self, metric, count):
        config = metric.get_config()
        self.metrics = [metric.__class__.from_config(config) for _ in range(count)]

    def update(self, y_true, y_pred):
        for metric, pred in zip(self.metrics, y_pred):
            metric.update_state(y_true, pred)

    def secondary(self):
        return None

    def result(self):
        return np.array(
            [float(keras.ops.convert_to_numpy(m.result())) for m in self.metrics]
        )


class _LossAccumulator:
    def __init__(self, loss, count):
        self.loss = loss
        self.sums = np.zeros(count, dtype=np.float64)
        self.total = 0

    def update(self, y_true, y_pred):
        n = y_pred.shape[1]
        for index, pred in enumerate(y_pred):
            value = keras.ops.convert_to_numpy(self.loss(y_true, pred))
            value = np.asarray(value, dtype=np.float64)
            self.sums[index] += float(value.mean()) * n
        self.total += n

    def secondary(self):
        return None

    def result(self):
        return self.sums / max(self.total, 1)

"""Knowledge distillation (Hinton, Vinyals & Dean 2015) as pure `keras.ops`."""

from keras import ops


def distillation_loss(labels, teacher_logits, logits, temperature=4.0, alpha=0.3):
    """Per-example distillation loss of student `logits`.

    With `T = temperature`, `p_t = softmax(teacher_logits / T)` and
    `p_s = softmax(logits / T)`:

    `loss = alpha * CE(labels, softmax(logits))
            + (1 - alpha) * T**2 * KL(p_t || p_s)`.

    The `T**2` keeps the soft term's gradient on the scale of the hard
    one's when `T` changes.

    Args:
        labels: integer class labels, shape `(batch,)`.
        teacher_logits: the teacher's logits, shape `(batch, classes)`.
        logits: the student's logits, shape `(batch, classes)`.
        temperature: `T > 0`; larger values soften both distributions.
        alpha: weight of the hard-label cross-entropy, in `[0, 1]`.

    Returns:
        The loss of each example, shape `(batch,)`.

    Example:

    >>> import numpy as np
    >>> labels = np.array([0, 1])
    >>> teacher = np.array([[2.0, 0.0], [0.0, 2.0]], "float32")
    >>> loss = distillation_loss(labels, teacher, teacher, alpha=0.0)
    >>> [round(float(v), 6) for v in loss]  # the student is the teacher
    [0.0, 0.0]

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", NeurIPS 2014 Deep Learning Workshop (arXiv 1503.02531).
    """
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    log_student = ops.log_softmax(logits, axis=-1)
    hard = -ops.take_along_axis(log_student, labels[:, None], axis=-1)[:, 0]
    log_t = ops.log_softmax(teacher_logits / temperature, axis=-1)
    log_s = ops.log_softmax(logits / temperature, axis=-1)
    soft = ops.sum(ops.exp(log_t) * (log_t - log_s), axis=-1)
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def soft_target_loss(teacher_logits, logits, temperature=1.0):
    """Temperature-scaled KL divergence from a teacher to a student.

    Over the last axis, with `T = temperature`,
    `p_t = softmax(teacher_logits / T)` and `p_s = softmax(logits / T)`:

    `loss = T**2 * KL(p_t || p_s) = T**2 * Σ p_t (log p_t - log p_s)`.

    Any leading shape: `(batch, classes)` gives one value per example,
    `(batch, tokens, vocabulary)` one per token (the token-level
    distillation of causal language models).

    Args:
        teacher_logits: the teacher's logits, shape `(..., classes)`.
        logits: the student's logits, same shape.
        temperature: `T > 0`.

    Returns:
        The loss per position, shape `logits.shape[:-1]`.

    Example:

    >>> import numpy as np
    >>> t = np.zeros((2, 3, 5), "float32")
    >>> [round(float(v), 6) for v in np.ravel(soft_target_loss(t, t))]
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", arXiv 1503.02531 (2015).
    """
    teacher_logits = ops.cast(teacher_logits, "float32")
    logits = ops.cast(logits, "float32")
    log_t = ops.log_softmax(teacher_logits / temperature, axis=-1)
    log_s = ops.log_softmax(logits / temperature, axis=-1)
    return temperature**2 * ops.sum(ops.exp(log_t) * (log_t - log_s), axis=-1)

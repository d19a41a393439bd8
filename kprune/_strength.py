"""What kprune's group regularizers and constraints share: argument checks
and the strength `lambda` held in a non-trainable `keras.Variable`."""

import math

import keras
import numpy as np
from keras import ops

from kprune.ops.group_sparsity import unit_axes


def check_axis(axis):
    """`axis` (an int or a sequence of distinct ints) as an int or a tuple."""
    try:
        unit_axes(8, axis)
    except ValueError:
        raise ValueError(
            "`axis` must be an int or a non-empty sequence of distinct ints "
            f"(the axes indexing output units). Received: axis={axis!r}"
        ) from None
    return axis if isinstance(axis, int) else tuple(int(a) for a in axis)


def check_partners(partners, argument="partners"):
    """`partners` as a tuple of `"<layer>/<weight>"` strings, or ValueError."""
    if partners is None:
        return ()
    if isinstance(partners, str) or not isinstance(partners, (list, tuple)):
        raise ValueError(
            f"`{argument}` must be a list of '<layer name>/<weight name>' "
            f"strings (e.g. ['bn1/gamma', 'bn1/beta']). Received: "
            f"{argument}={partners!r}"
        )
    out = []
    for p in partners:
        if not isinstance(p, str) or "/" not in p.strip("/"):
            raise ValueError(
                f"Each entry of `{argument}` must be a '<layer name>/<weight "
                f"name>' string (e.g. 'bn1/gamma'). Received: {argument}="
                f"{list(partners)!r}"
            )
        out.append(p)
    return tuple(out)


def check_float(value, name, positive=False, maximum=None):
    """`value` as a finite float `>= 0` (`> 0` if `positive`, `<= maximum`)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    ok = number is not None and not math.isinf(number) and not math.isnan(number)
    if ok:
        ok = number > 0.0 if positive else number >= 0.0
        if maximum is not None:
            ok = ok and number <= maximum
    if not ok:
        bound = "> 0" if positive else ">= 0"
        if maximum is not None:
            bound = f"in [0, {maximum}]"
        raise ValueError(
            f"`{name}` must be a finite float {bound}. Received: {name}={value!r}"
        )
    return number


class HasStrength:
    """The strength interface: `lambda` in a non-trainable `keras.Variable`.

    `kprune.callbacks.RegularizationScheduler` and `SizeTarget` assign
    `obj.strength`; `scale` is a fixed per-layer multiplier.
    """

    def _init_strength(self, value, name):
        self._strength = keras.Variable(
            value, dtype="float32", trainable=False, name=name
        )

    @property
    def strength(self):
        """The `keras.Variable` holding `lambda` (assign to change it mid-fit)."""
        return self._strength

    def strength_value(self):
        """The current strength as a Python float (shortest float32 repr)."""
        return float(str(np.float32(ops.convert_to_numpy(self._strength))))

    def effective_strength(self):
        """The layer's `lambda` as a Python float: `strength * scale`."""
        return self.strength_value() * self.scale

"""Run test code where a fresh process is needed, and interrupt a `fit`.

Some checks cannot run in the test process: TensorFlow's logical devices
(for `tf.distribute.MirroredStrategy` on one CPU) must be configured before
TensorFlow initializes, and Keras' backend is fixed at import.
"""

import json
import os
import subprocess
import sys

import keras

# Prepend to a script: two logical CPUs, before TensorFlow initializes.
TWO_CPUS = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_script(script, env=None, timeout=300):
    """Run `script` in a fresh Python; return the JSON it prints after `RESULT `.

    The script runs with kprune's checkout first on `PYTHONPATH` and no GPU.
    It reports by printing one line `RESULT <json>`.

    Args:
        script: Python source.
        env: extra environment variables (e.g. `{"KERAS_BACKEND": "jax"}`).
        timeout: seconds.

    Returns:
        The decoded JSON value.

    Raises:
        AssertionError: with the end of stderr, if the script fails or
            prints no `RESULT` line.

    Example:

    >>> run_script("import json; print('RESULT ' + json.dumps([1, 2]))")
    [1, 2]
    """
    import kprune

    root = os.path.dirname(os.path.dirname(os.path.abspath(kprune.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    full_env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=path)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or len(lines) != 1:
        raise AssertionError(
            f"script failed (rc={proc.returncode}, {len(lines)} RESULT lines):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[0][len("RESULT ") :])


class InterruptAt(keras.callbacks.Callback):
    """Raise `RuntimeError("interrupted")` after batch `batch` of epoch `epoch`.

    Simulates a crash mid-fit, to test resuming with
    `keras.callbacks.BackupAndRestore`.

    Args:
        epoch: the epoch (0-based, absolute) to interrupt.
        batch: the batch after which to raise.

    Example:

    >>> cb = InterruptAt(epoch=2, batch=3)
    >>> cb.epoch, cb.batch
    (2, 3)
    """

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self._current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._current == self.epoch and batch == self.batch:
            raise RuntimeError("interrupted")

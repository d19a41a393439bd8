"""A user's first hour with the `kprune` command (issue 16, points 1, 3, 4,
8 and 9): the CLI never destroys a file, failures leave nothing behind,
every error is one line.

The real `kprune` command runs in subprocesses (the console script, or
`python -m kprune.cli` where it is not installed, with this checkout first
on PYTHONPATH). Each launch costs a TensorFlow import,
so the few launches start together when the module is set up, share one
saved model, and each checks several things; the variations run in-process
through `kprune.cli.main`, which is the same code.
"""

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from unittest import mock

import keras
import numpy as np

import kprune
from kprune import cli
from kprune.testing import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = None  # the module's folder of files
LAUNCHES = {}
DEMO_LINES = []  # what the demo printed before it was interrupted

MY_LAYERS = textwrap.dedent(
    """
    import keras

    @keras.saving.register_keras_serializable(package="first_hour")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x
    """
)


def path(name):
    return os.path.join(DIR, name)


def digest(name):
    with open(path(name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def leftovers(folder):
    """Temporary files kprune left behind in `folder`."""
    return [n for n in os.listdir(folder) if ".kprune-tmp-" in n]


def tiny_model():
    """5 -> 4 (relu) -> 2, with hidden unit 1 dead."""
    model = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ],
        name="tiny",
    )
    hidden = model.get_layer("hidden")
    kernel = keras.ops.convert_to_numpy(hidden.kernel).copy()
    kernel[:, 1] = 0.0
    hidden.kernel.assign(kernel)
    hidden.bias.assign(np.array([0.1, 0.0, 0.2, 0.3], "float32"))
    return model


def _save_files():
    tiny_model().save(path("tiny.keras"))
    with open(path("my_layers.py"), "w") as f:
        f.write(MY_LAYERS)
    sys.path.insert(0, DIR)
    try:
        import my_layers  # noqa: F401  (registers first_hour>Doubler)
    finally:
        sys.path.remove(DIR)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    x = sys.modules["my_layers"].Doubler(name="double")(x)
    x = keras.layers.Lambda(lambda t: t + 1.0, name="shift")(x)
    keras.Model(inputs, keras.layers.Dense(2, name="out")(x)).save(path("custom.keras"))
    del sys.modules["my_layers"]
    # Forget the class again: the CLI must be told where it lives (--import).
    keras.saving.get_custom_objects().pop("first_hour>Doubler", None)
    lstm = keras.Sequential(
        [keras.Input((4, 3)), keras.layers.LSTM(3), keras.layers.Dense(2)]
    )
    lstm.save(path("lstm.keras"))
    rng = np.random.default_rng(0)
    np.savez(
        path("mnist_tiny.npz"),
        x_train=rng.integers(0, 255, (200, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 200, dtype=np.uint8),
        x_test=rng.integers(0, 255, (50, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 50, dtype=np.uint8),
    )
    open(path("empty.keras"), "wb").close()


def _launch(name, args):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            p for p in (ROOT, os.environ.get("PYTHONPATH")) if p
        ),
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop("KPRUNE_TRACEBACK", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # TensorFlow set it in this process
    # The installed console script when there is one, else the same `main`.
    command = [shutil.which("kprune") or sys.executable]
    if command[0] == sys.executable:
        command += ["-m", "kprune.cli"]
    LAUNCHES[name] = subprocess.Popen(
        [sys.executable, "-c", _AS_FROM_A_SHELL, *command, *args],
        cwd=DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Ctrl-C as a terminal gives it: a test run started in the background of a
# non-interactive shell (`pytest ... &`) has SIGINT ignored, and a child
# inherits that, so `kprune` would never see the test's Ctrl-C. This
# launcher resets SIGINT, then becomes the command (exec keeps the pid).
_AS_FROM_A_SHELL = (
    "import os, signal, sys; "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _interrupt_demo_after_its_first_epoch():
    """Ctrl-C (SIGINT) the demo as soon as it has trained one epoch."""
    process = LAUNCHES["demo"]
    for line in process.stdout:
        DEMO_LINES.append(line)
        if "epoch 1/1000" in line:
            process.send_signal(signal.SIGINT)
            return


def setUpModule():
    global DIR
    DIR = tempfile.mkdtemp(prefix="kprune_cli_")
    _save_files()
    os.makedirs(path("demo_out"))
    # Start every launch now; they run while the in-process tests do.
    _launch("demo", ["demo", "--npz", "mnist_tiny.npz", "--epochs", "1000",
                     "--out", "demo_out", "--batch-size", "50"])  # fmt: skip
    _launch("same", ["export", "tiny.keras", "tiny.keras"])
    _launch(
        "custom",
        ["slim", "--import", "my_layers.py", "--allow-lambda", "custom.keras",
         "custom_slim.keras", "--json", "custom_report.json"],
    )  # fmt: skip
    _launch("lstm", ["export", "lstm.keras", "lstm.tflite"])
    watcher = threading.Thread(target=_interrupt_demo_after_its_first_epoch)
    watcher.daemon = True
    watcher.start()
    LAUNCHES["demo_watcher"] = watcher


def tearDownModule():
    for process in LAUNCHES.values():
        if isinstance(process, subprocess.Popen):
            if process.poll() is None:
                process.kill()
            process.communicate()
    shutil.rmtree(DIR, ignore_errors=True)


def finished(name, timeout=300):
    process = LAUNCHES[name]
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def run(argv):
    """`cli.main(argv)` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


class CliFilesTest(TestCase):
    def kprune_lines(self, err):
        return [line for line in err.splitlines() if line.startswith("kprune:")]

    def assertOneLineError(self, code, err, *fragments):
        self.assertEqual(code, 1, err)
        self.assertNotIn("Traceback", err)
        lines = [x for x in self.kprune_lines(err) if not x.startswith("kprune: warn")]
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("kprune: error: "), err)
        for fragment in fragments:
            self.assertIn(fragment, lines[0])

    # ------------------------------------------------- point 1: never destroy

    def test_real_command_refuses_to_overwrite_its_input(self):
        before = digest("tiny.keras")
        code, _, err = finished("same")
        self.assertOneLineError(code, err, "tiny.keras is the input file")
        self.assertEqual(digest("tiny.keras"), before)
        self.assertEqual(leftovers(DIR), [])

    def test_outputs_are_checked_before_anything_is_written(self):
        before = digest("tiny.keras")
        link = path("link.keras")
        if not os.path.exists(link):
            os.symlink(path("tiny.keras"), link)
        for argv, fragment in (
            (["slim", path("tiny.keras"), path("tiny.keras")], "is the input file"),
            (["slim", path("tiny.keras"), link], "is the input file"),
            (["export", link, path("tiny.keras")], "is the input file"),
            (
                ["slim", path("tiny.keras"), path("o.keras"), "--json", link],
                "is the input file",
            ),
            (["export", path("tiny.keras"), path("out/model.keras")], ".tflite"),
            (["export", path("tiny.keras"), path("model.keras")], "must end with"),
            (
                ["slim", path("tiny.keras"), path("model.tflite")],
                "must end with .keras",
            ),
            (["slim", path("tiny.keras"), DIR + "/x.keras", "--json", DIR], "folder"),
        ):
            with self.subTest(argv=argv):
                code, _, err = run(argv)
                self.assertOneLineError(code, err, fragment)
        self.assertEqual(digest("tiny.keras"), before)
        self.assertFalse(os.path.exists(path("model.keras")))
        self.assertFalse(os.path.exists(path("model.tflite")))

    def test_existing_output_is_replaced_only_with_force(self):
        target = path("exists.tflite")
        with open(target, "wb") as f:
            f.write(b"precious")
        code, _, err = run(["export", path("tiny.keras"), target])
        self.assertOneLineError(code, err, "exists; pass --force to replace it")
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        code, out, err = run(["export", path("tiny.keras"), target, "--force"])
        self.assertEqual(code, 0, err)
        self.assertIn("verified against Keras", out)
        self.assertGreater(os.path.getsize(target), 100)
        self.assertEqual(leftovers(DIR), [])

    # ------------------------------------------ point 3: nothing left behind

    def test_ctrl_c_in_the_demo_is_one_line_and_leaves_no_partial_file(self):
        process = LAUNCHES["demo"]
        LAUNCHES["demo_watcher"].join(timeout=300)
        self.assertTrue(any("epoch 1/1000" in x for x in DEMO_LINES), DEMO_LINES)
        out, err = process.communicate(timeout=120)
        self.assertEqual(process.returncode, 130, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(self.kprune_lines(err), ["kprune: interrupted"])
        # The training log grows during fit: it must not be left half-written.
        self.assertEqual(os.listdir(path("demo_out")), [])

    def test_failed_writes_leave_nothing(self):
        # --json to a folder that does not exist: refused before writing.
        out_model = path("never.keras")
        code, _, err = run(
            ["slim", path("tiny.keras"), out_model, "--json", path("no/r.json")]
        )
        self.assertOneLineError(code, err, "--json report does not exist")
        self.assertFalse(os.path.exists(out_model))
        # A write that fails late (an unwritable file system) names the output.
        unwritable = "/sys/kprune_first_hour.keras"
        if os.path.isdir("/sys") and os.access("/sys", os.W_OK):
            code, _, err = run(["slim", path("tiny.keras"), unwritable])
            self.assertOneLineError(code, err, f"cannot write the output {unwritable}")
        # Ctrl-C while writing: exit 130, no output, no temporary file.
        target = path("interrupted.keras")
        with mock.patch.object(
            keras.Model, "save", side_effect=KeyboardInterrupt, autospec=True
        ):
            code, _, err = run(
                ["slim", path("tiny.keras"), target, "--json", path("i.json")]
            )
        self.assertEqual(code, 130)
        self.assertEqual(self.kprune_lines(err), ["kprune: interrupted"])
        self.assertFalse(os.path.exists(target) or os.path.exists(path("i.json")))
        # A file that fails verification is not left at the output path.
        target = path("unverified.tflite")
        code, _, err = run(
            [
                "export",
                path("tiny.keras"),
                target,
                "--quantize",
                "dynamic",
                "--tolerance",
                "1e-12",
            ]
        )
        self.assertOneLineError(code, err, "--tolerance", "--no-verify")
        self.assertFalse(os.path.exists(target))
        self.assertEqual(leftovers(DIR), [])

    def test_library_writers_are_atomic(self):
        target = path("verified_only.tflite")
        with self.assertRaises(kprune.export.VerificationError):
            kprune.export.to_tflite(
                tiny_model(), target, quantize="dynamic", tolerance=1e-12
            )
        self.assertFalse(os.path.exists(target))
        plan = kprune.surgery.PruningPlan({"a": [1]})
        for writer, name in (
            (plan.save, "plan.json"),
            (lambda p: kprune.report.to_json({"a": 1}, p), "report.json"),
        ):
            with mock.patch("os.replace", side_effect=KeyboardInterrupt):
                with self.assertRaises(KeyboardInterrupt):
                    writer(path(name))
            self.assertFalse(os.path.exists(path(name)))
        self.assertEqual(leftovers(DIR), [])

    # ------------------------------------------- point 4: conversion errors

    def test_conversion_failure_is_one_line_naming_ops_and_flag(self):
        code, _, err = finished("lstm")
        self.assertOneLineError(
            code,
            err,
            "TFLite conversion failed",
            "TensorListReserve",
            "--select-tf-ops",
        )
        self.assertFalse(os.path.exists(path("lstm.tflite")))
        # The converter's MLIR diagnostics stay off the terminal.
        self.assertNotIn("loc(callsite", err)
        if LAUNCHES["lstm"].args[3] != sys.executable:  # the `kprune` script
            self.assertNotIn("tf_tfl_flatbuffer_helpers", err)  # C++ log lines
        code, out, err = run(
            [
                "export",
                path("lstm.keras"),
                path("lstm_select.tflite"),
                "--select-tf-ops",
            ]
        )
        self.assertEqual(code, 0, err)
        self.assertIn("NOT verified: it uses TF Select ops (TensorListReserve", out)
        self.assertEqual(
            kprune.export.tf_select_ops(path("lstm_select.tflite"))[0],
            "TensorListReserve",
        )

    # --------------------------------- point 8: what real models need to load

    def test_real_command_imports_user_code_and_allows_lambda_on_request(self):
        code, out, err = finished("custom")
        self.assertEqual(code, 0, err)
        self.assertEqual(
            self.kprune_lines(err),
            [
                "kprune: warning: --allow-lambda: loading custom.keras runs the "
                "Python code stored in it (Lambda layers); use it only for files "
                "you trust"
            ],
        )
        self.assertIn("saved custom_slim.keras and custom_report.json", out)
        self.assertTrue(os.path.isfile(path("custom_report.json")))

    def test_loading_errors_say_which_flag_helps(self):
        code, _, err = run(["inspect", path("custom.keras")])
        self.assertOneLineError(code, err, "'Doubler'", "--import")
        code, _, err = run(["inspect", path("custom.keras"), "--import", "nope.py"])
        self.assertOneLineError(code, err, "--import nope.py: no such file")
        code, _, err = run(
            ["inspect", path("custom.keras"), "--import", "no_such_module_xyz"]
        )
        self.assertOneLineError(code, err, "--import no_such_module_xyz failed")
        code, _, err = run(
            ["inspect", path("custom.keras"), "--import", path("my_layers.py")]
        )
        self.assertOneLineError(code, err, "Lambda layer", "--allow-lambda")
        self.assertNotIn("safe_mode", err)
        code, _, err = run(["inspect", path("empty.keras")])
        self.assertOneLineError(code, err, "not a valid .keras file", "empty")
        with open(path("tiny.keras"), "rb") as f:
            head = f.read(200)
        with open(path("truncated.keras"), "wb") as f:
            f.write(head)
        code, _, err = run(["inspect", path("truncated.keras")])
        self.assertOneLineError(code, err, "not a valid .keras file")

    def test_messages_name_cli_flags_not_python_arguments(self):
        plan = path("all.json")
        with open(plan, "w") as f:
            f.write('{"units": {"hidden": [0, 1, 2, 3]}}')
        code, _, err = run(
            ["slim", path("tiny.keras"), path("e.keras"), "--plan", plan]
        )
        self.assertOneLineError(code, err, "--allow-empty")
        self.assertNotIn("allow_empty", err)
        code, _, err = run(
            [
                "slim",
                path("tiny.keras"),
                path("e.keras"),
                "--plan",
                plan,
                "--allow-empty",
            ]
        )
        self.assertEqual(code, 0, err)
        with open(plan, "w") as f:
            f.write('{"units": {"hidden": [1.5]}}')
        code, _, err = run(
            ["slim", path("tiny.keras"), path("f.keras"), "--plan", plan]
        )
        self.assertOneLineError(code, err, "layer 'hidden' must be integers")
        keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(2)]).save(
            path("open.keras")
        )
        code, _, err = run(["export", path("open.keras"), path("open.tflite")])
        self.assertOneLineError(code, err, "--sample-inputs")
        np.save(path("x.npy"), np.ones((2, 6, 3), "float32"))
        code, out, err = run(
            [
                "export",
                path("open.keras"),
                path("open.tflite"),
                "--sample-inputs",
                path("x.npy"),
            ]
        )
        self.assertEqual(code, 0, err)
        self.assertIn("verified against Keras", out)

    # ------------------------------------------------------------ point 9

    def test_version(self):
        code, out, err = run(["--version"])
        self.assertEqual(code, 0, err)
        self.assertEqual(out.split()[:2], ["kprune", kprune.__version__])

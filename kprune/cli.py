"""The `kprune` command line: a thin layer over the Python API.

    kprune --version
    kprune inspect MODEL.keras [--json | --markdown] [--input-shape 224,224,3]
    kprune slim IN.keras OUT.keras [--plan plan.json] [--allow-empty]
                [--json REPORT.json] [--force]
    kprune prune IN.keras OUT.keras (--macs 0.5 | --params 0.5) [--data X.npz]
                 [--importance l2] [--round-to 8] [--scope global|layer]
                 [--deploy float32|int8] [--depth N|auto] [--steps N]
                 [--ignore LAYER] [--plan PLAN.json] [--force]
    kprune export IN.keras OUT.tflite [--quantize dynamic|float16|int8]
                  [--sparse] [--select-tf-ops] [--no-verify] [--tolerance T]
                  [--sample-inputs X.npy|X.npz] [--measure] [--force]
    kprune demo [ARGS...]

Every command that reads a model also takes `--import MODULE_OR_FILE.py`
(repeatable: import your own layers / models so Keras can load them) and
`--allow-lambda` (load `Lambda` layers, which runs Python code stored in
the file: only for files you trust).

Files are never destroyed: outputs are written atomically (a temporary file
in the same folder, renamed when complete), so a failure or Ctrl-C leaves
nothing behind; an output may not be an input; an existing output is
replaced only with `--force`.

Errors are one line on stderr (`kprune: error: ...`) and exit status 1
(set KPRUNE_TRACEBACK=1 to see the full traceback instead); bad usage exits
with 2; Ctrl-C prints `kprune: interrupted` and exits with 130.

To add a command: write `_add_<name>(commands)` (its parser, with
`set_defaults(run=...)`) and `_run_<name>(args)`, and list it in `_COMMANDS`.
"""

import argparse
import contextlib
import importlib
import importlib.util
import os
import re
import sys
import tempfile
import warnings
import zipfile

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A problem to report as one line, without a traceback."""


def _one_line(error):
    text = " ".join(str(error).split())
    return text or error.__class__.__name__


# The library's messages name Python arguments; on the command line the
# matching flags are what helps.
_CLI_HINTS = (
    (r"`?allow_empty=True`?", "--allow-empty"),
    (r"`tolerance=`|`?tolerance=`?(?=\s)", "--tolerance"),
    (r"`?verify=False`?", "--no-verify"),
    (r"`sample_inputs`|\bsample_inputs\b", "--sample-inputs"),
    (
        r"`select_tf_ops=True` \(CLI: `kprune export --select-tf-ops`\)",
        "--select-tf-ops",
    ),
    (r"`?safe_mode=False`?", "--allow-lambda"),
)


def _cli_hints(message):
    for pattern, flag in _CLI_HINTS:
        message = re.sub(pattern, flag, message)
    return message


def _warn(message):
    print(f"kprune: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def _native_stderr_hidden():
    """Hide what native code writes to stderr (fd 2) inside the block.

    TensorFlow's TFLite converter prints its MLIR diagnostics (dozens of
    `loc(callsite(...)): error: ...` lines) straight to fd 2, whatever the
    log level; kprune's one-line error says what they say. Not hidden with
    KPRUNE_TRACEBACK=1, or when stderr is not a real file.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None or os.environ.get("KPRUNE_TRACEBACK"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), fd)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, fd)
    finally:
        os.close(saved)


# ---------------------------------------------------------------- files


def _same_file(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, different spellings
    except OSError:
        return False


def _check_input(path, suffix=".keras"):
    if not os.path.exists(path):
        raise CliError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CliError(f"{path} is a folder, expected a {suffix} file")
    if not path.endswith(suffix):
        raise CliError(
            f"{path} is not a .keras file (save the model with "
            "model.save('model.keras'))"
        )


def _check_keras_file(path):
    if os.path.getsize(path) == 0:
        raise CliError(f"{path} is not a valid .keras file: it is empty")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise CliError(
            f"{path} is not a valid .keras file (not a zip archive: {_one_line(error)})"
        ) from None
    if "config.json" not in names:
        raise CliError(
            f"{path} is not a valid .keras file: the archive has no config.json"
        )


def _check_outputs(outputs, inputs, force):
    """Refuse outputs that would destroy an input or an existing file.

    Args:
        outputs: list of `(path, required_suffix or None, what)`.
        inputs: paths that will be read.
        force: replace existing outputs.
    """
    seen = []
    for path, suffix, what in outputs:
        for source in inputs:
            if os.path.exists(source) and _same_file(path, source):
                raise CliError(
                    f"the {what} {path} is the input file {source}; write to "
                    "another file"
                )
        if suffix and not path.endswith(suffix):
            raise CliError(f"the {what} must end with {suffix}: {path}")
        for other in seen:
            if _same_file(path, other) or os.path.abspath(path) == (
                os.path.abspath(other)
            ):
                raise CliError(f"two outputs are the same file: {path}")
        seen.append(path)
        if os.path.isdir(path):
            raise CliError(f"the {what} {path} is a folder")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise CliError(f"the folder of the {what} does not exist: {folder}")
        if not os.access(folder, os.W_OK):
            raise CliError(
                f"cannot write the {what} {path}: its folder is not writable"
            )
        if os.path.exists(path) and not force:
            raise CliError(f"the {what} {path} exists; pass --force to replace it")


@contextlib.contextmanager
def _writing(path, what):
    """Atomic output; an OSError names the output."""
    from kprune._atomic import atomic_path

    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as error:
        reason = error.strerror or _one_line(error)
        raise CliError(f"cannot write the {what} {path}: {reason}") from None


# ------------------------------------------------------------- loading


def _import_user_code(spec):
    """Import a module by name, or a `.py` file, to register user classes."""
    try:
        if spec.endswith(".py") or os.sep in spec or "/" in spec:
            if not os.path.isfile(spec):
                raise CliError(f"--import {spec}: no such file")
            name = os.path.splitext(os.path.basename(spec))[0]
            module_spec = importlib.util.spec_from_file_location(name, spec)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            folder = os.path.dirname(os.path.abspath(spec))
            if folder not in sys.path:
                sys.path.insert(0, folder)  # its own sibling imports
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            importlib.import_module(spec)
    except CliError:
        raise
    except Exception as error:  # the user's code: report any failure
        raise CliError(
            f"--import {spec} failed: {type(error).__name__}: {_one_line(error)}"
        ) from None


def _load(path, args):
    _check_input(path)
    _check_keras_file(path)
    import keras

    import kprune  # noqa: F401  (registers kprune's serializable objects)

    allow_lambda = getattr(args, "allow_lambda", False)
    if allow_lambda:
        _warn(
            f"--allow-lambda: loading {path} runs the Python code stored in "
            "it (Lambda layers); use it only for files you trust"
        )
    try:
        return keras.models.load_model(path, safe_mode=not allow_lambda)
    except Exception as error:  # any loading failure is one line
        text = _one_line(error)
        if "safe_mode" in text or "unsafe_deserialization" in text:
            raise CliError(
                f"{path} contains a Lambda layer (Python code stored in the "
                "file), which kprune does not run by default; if you trust "
                "the file, add --allow-lambda"
            ) from None
        match = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        if match:
            raise CliError(
                f"could not load {path}: Keras does not know '{match.group(1)}' "
                "(a layer, model or function of your own); register it with "
                "--import MODULE or --import FILE.py (the class decorated "
                "with @keras.saving.register_keras_serializable())"
            ) from None
        if isinstance(error, (zipfile.BadZipFile, EOFError)):
            raise CliError(f"{path} is not a valid .keras file ({text})") from None
        raise CliError(f"could not load {path}: {text}") from None


def _add_loading_options(parser):
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import this module (or .py file) first, so that Keras can load "
        "your own layers and models (repeatable)",
    )
    parser.add_argument(
        "--allow-lambda",
        action="store_true",
        help="load Lambda layers: runs Python code stored in the file, use "
        "only for files you trust",
    )


def _add_force(parser):
    parser.add_argument(
        "--force", action="store_true", help="replace the output file if it exists"
    )


# ------------------------------------------------------------ commands


def _add_inspect(commands):
    inspect = commands.add_parser(
        "inspect", help="print params, non-zeros, MACs and widths per layer"
    )
    inspect.add_argument("model", metavar="MODEL.keras")
    inspect.add_argument(
        "--input-shape",
        action="append",
        type=_shape,
        metavar="D1,D2,...",
        help="count MACs on this input shape, without the batch axis, e.g. "
        "224,224,3 (repeat for several inputs); for models built on None dims",
    )
    style = inspect.add_mutually_exclusive_group()
    style.add_argument("--json", action="store_true", help="print JSON")
    style.add_argument("--markdown", action="store_true", help="print Markdown")
    _add_loading_options(inspect)
    inspect.set_defaults(run=_run_inspect)


def _run_inspect(args):
    from kprune import report

    model = _load(args.model, args)
    input_shape = None
    if args.input_shape:
        input_shape = (
            args.input_shape[0] if len(args.input_shape) == 1 else args.input_shape
        )
    result = report.summary(model, input_shape=input_shape)
    if args.json:
        print(report.to_json(result))
    else:
        print(report.format_table(result, markdown=args.markdown), end="")
    return 0


def _add_slim(commands):
    slim = commands.add_parser(
        "slim",
        help="remove dead units (or the units of a plan) and save the smaller model",
    )
    slim.add_argument("input", metavar="IN.keras")
    slim.add_argument("output", metavar="OUT.keras")
    slim.add_argument(
        "--plan",
        metavar="PLAN.json",
        help="a kprune.surgery.PruningPlan as JSON (default: remove dead units)",
    )
    slim.add_argument(
        "--allow-empty",
        action="store_true",
        help="with --plan: allow emptying a layer (one unit is then kept)",
    )
    slim.add_argument("--json", metavar="REPORT.json", help="also write the comparison")
    _add_force(slim)
    _add_loading_options(slim)
    slim.set_defaults(run=_run_slim)


def _run_slim(args):
    from kprune import report, surgery

    outputs = [(args.output, ".keras", "output")]
    if args.json is not None:
        outputs.append((args.json, None, "--json report"))
    inputs = [args.input] + ([args.plan] if args.plan else [])
    _check_outputs(outputs, inputs, args.force)
    plan = None
    if args.plan is not None:
        if not os.path.isfile(args.plan):
            raise CliError(f"no such plan file: {args.plan}")
        with open(args.plan) as f:
            plan = surgery.PruningPlan.from_json(f.read())
    model = _load(args.input, args)
    if plan is None:
        slimmed = surgery.slim(model)
    else:
        slimmed = surgery.remove_units(model, plan, allow_empty=args.allow_empty)
    comparison = report.compare(model, slimmed)
    text = report.to_json(comparison) + "\n"
    with _writing(args.output, "output") as tmp_model:
        slimmed.save(tmp_model)
        if args.json is not None:
            with _writing(args.json, "--json report") as tmp_json:
                with open(tmp_json, "w") as f:
                    f.write(text)
    print(report.format_table(comparison), end="")
    print(f"saved {args.output}" + (f" and {args.json}" if args.json else ""))
    return 0


def _add_prune(commands):
    pruner = commands.add_parser(
        "prune", help="structured pruning to a MACs or parameter budget"
    )
    pruner.add_argument("input", metavar="IN.keras")
    pruner.add_argument("output", metavar="OUT.keras")
    budget = pruner.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--macs", type=float, help="fraction of the MACs to keep (0.5 = half)"
    )
    budget.add_argument(
        "--params", type=float, help="fraction of the parameters to keep"
    )
    pruner.add_argument(
        "--data",
        metavar="X.npz",
        help="calibration data: an .npz with 'x' (and 'y' for taylor / car)",
    )
    pruner.add_argument(
        "--importance",
        default="l2",
        choices=["l1", "l2", "fpgm", "lamp", "taylor", "activation", "car", "random"],
    )
    pruner.add_argument(
        "--round-to", type=int, default=None, help="keep widths at multiples of N"
    )
    pruner.add_argument("--scope", choices=["global", "layer"], default="global")
    pruner.add_argument(
        "--deploy",
        choices=["float32", "int8"],
        default="float32",
        help="the number format the exported file runs in: weighs the "
        "runtime's cost of moving activations in the ranking "
        "(kprune.prune(activation_cost=...))",
    )
    pruner.add_argument(
        "--depth",
        type=_depth,
        default=None,
        metavar="N|auto",
        help="also remove N residual blocks whole, or 'auto': as many as "
        "the speed estimate for --deploy asks for (needs --data; "
        "kprune.prune(depth=...))",
    )
    pruner.add_argument("--steps", type=int, default=1, help="pruning rounds")
    pruner.add_argument(
        "--ignore", action="append", metavar="LAYER", help="keep this layer's units"
    )
    pruner.add_argument("--plan", metavar="PLAN.json", help="also save the plan")
    _add_force(pruner)
    _add_loading_options(pruner)
    pruner.set_defaults(run=_run_prune)


def _depth(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--depth is a number of blocks or 'auto'. Received: {text!r}"
        ) from None


def _prune_data(path):
    import numpy as np

    if not os.path.isfile(path):
        raise CliError(f"no such data file: {path}")
    try:
        arrays = np.load(path)
    except Exception as error:
        raise CliError(f"could not read --data {path}: {_one_line(error)}") from None
    if not hasattr(arrays, "files"):
        return arrays
    with arrays:
        if "x" not in arrays:
            raise CliError(
                f"{path} has no array 'x' (save it with "
                f"np.savez(path, x=inputs, y=labels)); it has {sorted(arrays)}"
            )
        x = arrays["x"]
        y = arrays["y"] if "y" in arrays else None
    return (x, y) if y is not None else x


def _run_prune(args):
    import kprune
    from kprune import report

    outputs = [(args.output, ".keras", "output")]
    if args.plan is not None:
        outputs.append((args.plan, None, "--plan"))
    inputs = [args.input] + ([args.data] if args.data else [])
    _check_outputs(outputs, inputs, args.force)
    data = _prune_data(args.data) if args.data is not None else None
    model = _load(args.input, args)
    pruned, plan = kprune.prune(
        model,
        data,
        macs=args.macs,
        params=args.params,
        importance=args.importance,
        round_to=args.round_to,
        scope=args.scope,
        activation_cost=args.deploy,
        depth=args.depth,
        steps=args.steps,
        ignore=args.ignore or (),
    )
    with _writing(args.output, "output") as tmp_model:
        pruned.save(tmp_model)
        if args.plan is not None:
            with _writing(args.plan, "--plan") as tmp_plan:
                with open(tmp_plan, "w") as f:
                    f.write(plan.to_json())
    print(report.format_table(report.compare(model, pruned)), end="")
    key = "macs" if args.macs is not None else "params"
    print(
        f"{key}: kept {plan.report[key + '_ratio']:.4f} of the original "
        f"(target {plan.report['target']:g}), importance={args.importance}"
    )
    if plan.blocks:
        print(f"blocks removed whole: {', '.join(plan.blocks)}")
    print(f"saved {args.output}" + (f" and {args.plan}" if args.plan else ""))
    return 0


def _add_export(commands):
    exporter = commands.add_parser("export", help="convert to a verified .tflite file")
    exporter.add_argument("input", metavar="IN.keras")
    exporter.add_argument("output", metavar="OUT.tflite")
    exporter.add_argument(
        "--quantize", choices=["dynamic", "float16", "int8"], default=None
    )
    exporter.add_argument(
        "--sparse", action="store_true", help="store mostly-zero weights sparsely"
    )
    exporter.add_argument(
        "--select-tf-ops",
        action="store_true",
        help="keep ops LiteRT has no builtin for as TF Select ops (the app needs "
        "the Select TF ops runtime; such a file cannot be verified here)",
    )
    exporter.add_argument(
        "--no-verify", action="store_true", help="skip the LiteRT vs Keras check"
    )
    exporter.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="T",
        help="largest accepted max|tflite - keras| / max|keras| (default: per "
        "quantization mode, 1e-4 for float32)",
    )
    exporter.add_argument(
        "--sample-inputs",
        metavar="X.npy|X.npz",
        help="verification inputs (and int8 calibration data): a .npy array "
        "for one input, a .npz keyed by input name for several",
    )
    exporter.add_argument(
        "--measure", action="store_true", help="also time it with LiteRT (1 thread)"
    )
    exporter.add_argument(
        "--calibration-samples",
        type=int,
        default=100,
        help="calibration inputs for --quantize int8 (default 100)",
    )
    _add_force(exporter)
    _add_loading_options(exporter)
    exporter.set_defaults(run=_run_export)


def _sample_inputs(path, model):
    import numpy as np

    if not os.path.isfile(path):
        raise CliError(f"no such --sample-inputs file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as error:
        raise CliError(
            f"--sample-inputs {path} is not a .npy / .npz file: {_one_line(error)}"
        ) from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    names = [t.name for t in model.inputs]
    if set(names) <= set(arrays):
        return {name: arrays[name] for name in names}
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise CliError(
        f"--sample-inputs {path} holds {sorted(arrays)}; the model's inputs are "
        f"{names}: key the .npz by input name"
    )


def _run_export(args):
    from kprune import export

    _check_outputs([(args.output, ".tflite", "output")], [args.input], args.force)
    if args.calibration_samples < 1:
        raise CliError("--calibration-samples must be >= 1")
    model = _load(args.input, args)
    samples = None
    if args.sample_inputs is not None:
        samples = _sample_inputs(args.sample_inputs, model)
    data = None
    if args.quantize == "int8":
        if samples is not None:
            data = samples
        else:
            from kprune.export import _io

            data = _io.random_inputs(model, batch_size=args.calibration_samples, seed=0)
            _warn(
                f"int8 calibration uses {args.calibration_samples} random inputs "
                "drawn uniformly from [0, 1) with the model's input shapes, not "
                "real data; for a usable int8 model pass --sample-inputs with "
                "typical inputs"
            )
    with warnings.catch_warnings(record=True) as caught, _native_stderr_hidden():
        warnings.simplefilter("always", export.UnverifiedExportWarning)
        try:
            path = export.to_tflite(
                model,
                args.output,
                quantize=args.quantize,
                representative_data=data,
                sparse=args.sparse,
                verify=not args.no_verify,
                sample_inputs=samples,
                tolerance=args.tolerance,
                calibration_samples=args.calibration_samples,
                select_tf_ops=args.select_tf_ops,
            )
        except OSError as error:
            reason = error.strerror or _one_line(error)
            raise CliError(f"cannot write the output {args.output}: {reason}") from None
    unverified = [
        w for w in caught if issubclass(w.category, export.UnverifiedExportWarning)
    ]
    sizes = export.sizes(path)
    if args.no_verify:
        checked = "not verified (--no-verify)"
    elif unverified:
        ops = ", ".join(export.tf_select_ops(path))
        checked = (
            f"NOT verified: it uses TF Select ops ({ops}) that the LiteRT "
            "interpreter here cannot run"
        )
    else:
        checked = "verified against Keras"
    print(
        f"saved {path}: {sizes['bytes']:,} bytes ({sizes['gzip_bytes']:,} "
        f"gzipped), quantize={args.quantize}, sparse={args.sparse}, {checked}"
    )
    if args.measure:
        stats = export.measure_tflite(path, num_threads=1)
        print(
            f"latency (LiteRT, 1 thread, batch 1, {stats['delegate']} delegate): "
            f"median {stats['latency_ms_median']:.4g} ms, "
            f"p90 {stats['latency_ms_p90']:.4g} ms"
        )
    return 0


def _add_demo(commands):
    demo = commands.add_parser("demo", help="run the kprune demo (kprune demo --help)")
    demo.add_argument("args", nargs=argparse.REMAINDER)
    demo.set_defaults(run=_run_demo)


def _run_demo(args):
    try:
        import kprune.demo as demo
    except ImportError as error:
        raise CliError(f"the demo is not available: {_one_line(error)}") from None
    result = demo.main(list(args.args))
    return int(result or 0)


_COMMANDS = (_add_inspect, _add_slim, _add_prune, _add_export, _add_demo)


def _shape(text):
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 224,224,3, got {text!r}"
        ) from None


def _version():
    from kprune import __version__

    try:
        from importlib.metadata import version

        keras_version = version("keras")
    except Exception:  # not installed as a distribution
        keras_version = "unknown"
    return f"kprune {__version__} (keras {keras_version})"


def _parser():
    parser = argparse.ArgumentParser(
        prog="kprune",
        description="Make trained Keras 3 models smaller and export them to TFLite.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv=None):
    """Run the `kprune` command line.

    Args:
        argv: the arguments without the program name (default:
            `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 1 on an error (reported as one line
        `kprune: error: ...` on stderr), 2 on bad usage, 130 when
        interrupted (Ctrl-C).

    Example:

    >>> main(["--help"])  # doctest: +SKIP
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("kprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv):
    parser = _parser()
    try:
        if argv and argv[0] == "demo":
            # Everything after `demo` belongs to the demo (options included).
            args = argparse.Namespace(run=_run_demo, args=argv[1:], imports=[])
        else:
            args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        for spec in args.imports:
            _import_user_code(spec)
        return args.run(args)
    except CliError as error:
        message = _one_line(error)
    except Exception as error:
        if os.environ.get("KPRUNE_TRACEBACK"):
            raise
        message = _cli_hints(_one_line(error))
        # kprune reports bad input as ValueError / TypeError (surgery errors,
        # unsupported layers, ConversionError); VerificationError is an
        # AssertionError. Anything else is unexpected: name its type.
        if not isinstance(error, (ValueError, TypeError, OSError, AssertionError)):
            message = (
                f"{type(error).__name__}: {message} (KPRUNE_TRACEBACK=1 shows "
                "the traceback)"
            )
    print(f"kprune: error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

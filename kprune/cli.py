"""The `kprune` command line: a thin layer over the Python API.

    kprune inspect MODEL.keras [--json | --markdown] [--input-shape 224,224,3]
    kprune slim IN.keras OUT.keras [--plan plan.json] [--json REPORT.json]
    kprune prune IN.keras OUT.keras (--macs 0.5 | --params 0.5) [--data X.npz]
                 [--importance l2] [--round-to 8] [--plan PLAN.json]
    kprune export IN.keras OUT.tflite [--quantize dynamic|float16|int8]
                  [--sparse] [--no-verify] [--measure]
    kprune demo [ARGS...]

Errors are one line on stderr (`kprune: error: ...`) and a non-zero exit
(set KPRUNE_TRACEBACK=1 to see the full traceback instead).
"""

import argparse
import os
import sys

EXIT_ERROR = 1


class CliError(Exception):
    """A problem to report as one line, without a traceback."""


def _one_line(error):
    text = " ".join(str(error).split())
    return text or error.__class__.__name__


def _check_input(path):
    if not os.path.exists(path):
        raise CliError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CliError(f"{path} is a folder, expected a .keras file")
    if not path.endswith(".keras"):
        raise CliError(
            f"{path} is not a .keras file (save the model with "
            "model.save('model.keras'))"
        )


def _check_output(path, suffix):
    if suffix and not path.endswith(suffix):
        raise CliError(f"the output file must end with {suffix}: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"the folder of the output file does not exist: {folder}")


def _load(path):
    _check_input(path)
    import keras

    import kprune  # noqa: F401  (registers kprune's serializable objects)

    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # any loading failure is one line
        raise CliError(f"could not load {path}: {_one_line(error)}") from None


def _inspect(args):
    from kprune import report

    model = _load(args.model)
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


def _slim(args):
    from kprune import report, surgery

    _check_output(args.output, ".keras")
    plan = None
    if args.plan is not None:
        if not os.path.isfile(args.plan):
            raise CliError(f"no such plan file: {args.plan}")
        with open(args.plan) as f:
            plan = surgery.PruningPlan.from_json(f.read())
    model = _load(args.input)
    if plan is None:
        slimmed = surgery.slim(model)
    else:
        slimmed = surgery.remove_units(model, plan)
    slimmed.save(args.output)
    comparison = report.compare(model, slimmed)
    print(report.format_table(comparison), end="")
    if args.json is not None:
        report.to_json(comparison, path=args.json)
    print(f"saved {args.output}")
    return 0


def _prune(args):
    import numpy as np

    import kprune
    from kprune import report

    _check_output(args.output, ".keras")
    data = None
    if args.data is not None:
        if not os.path.isfile(args.data):
            raise CliError(f"no such data file: {args.data}")
        with np.load(args.data) as arrays:
            if "x" not in arrays:
                raise CliError(
                    f"{args.data} has no array 'x' (save it with "
                    f"np.savez(path, x=inputs, y=labels)); it has {sorted(arrays)}"
                )
            x = arrays["x"]
            y = arrays["y"] if "y" in arrays else None
        data = (x, y) if y is not None else x
    model = _load(args.input)
    pruned, plan = kprune.prune(
        model,
        data,
        macs=args.macs,
        params=args.params,
        importance=args.importance,
        round_to=args.round_to,
        scope=args.scope,
        steps=args.steps,
        ignore=args.ignore or (),
    )
    pruned.save(args.output)
    print(report.format_table(report.compare(model, pruned)), end="")
    key = "macs" if args.macs is not None else "params"
    print(
        f"{key}: kept {plan.report[key + '_ratio']:.4f} of the original "
        f"(target {plan.report['target']:g}), importance={args.importance}"
    )
    if args.plan is not None:
        plan.save(args.plan)
        print(f"saved plan {args.plan}")
    print(f"saved {args.output}")
    return 0


def _export(args):
    from kprune import export

    _check_output(args.output, None)
    model = _load(args.input)
    data = None
    if args.quantize == "int8":
        from kprune.export import _io

        data = _io.random_inputs(model, batch_size=args.calibration_samples, seed=0)
        print(
            f"kprune: note: int8 calibration uses {args.calibration_samples} "
            "random inputs drawn uniformly from [0, 1) with the model's input "
            "shapes, not real data; for a usable int8 model calibrate on your "
            "data with kprune.export.to_tflite(..., representative_data=...).",
            file=sys.stderr,
        )
    path = export.to_tflite(
        model,
        args.output,
        quantize=args.quantize,
        representative_data=data,
        sparse=args.sparse,
        verify=not args.no_verify,
    )
    sizes = export.sizes(path)
    checked = "not verified" if args.no_verify else "verified against Keras"
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


def _demo(args):
    try:
        import kprune.demo as demo
    except ImportError as error:
        raise CliError(f"the demo is not available: {_one_line(error)}") from None
    result = demo.main(list(args.args))
    return int(result or 0)


def _shape(text):
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 224,224,3, got {text!r}"
        ) from None


def _parser():
    parser = argparse.ArgumentParser(
        prog="kprune",
        description="Make trained Keras 3 models smaller and export them to TFLite.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

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
    inspect.set_defaults(run=_inspect)

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
    slim.add_argument("--json", metavar="REPORT.json", help="also write the comparison")
    slim.set_defaults(run=_slim)

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
    pruner.add_argument("--steps", type=int, default=1, help="pruning rounds")
    pruner.add_argument(
        "--ignore", action="append", metavar="LAYER", help="keep this layer's units"
    )
    pruner.add_argument("--plan", metavar="PLAN.json", help="also save the plan")
    pruner.set_defaults(run=_prune)

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
        "--no-verify", action="store_true", help="skip the LiteRT vs Keras check"
    )
    exporter.add_argument(
        "--measure", action="store_true", help="also time it with LiteRT (1 thread)"
    )
    exporter.add_argument(
        "--calibration-samples",
        type=int,
        default=100,
        help="random calibration inputs for --quantize int8 (default 100)",
    )
    exporter.set_defaults(run=_export)

    demo = commands.add_parser("demo", help="run the kprune demo (kprune demo --help)")
    demo.add_argument("args", nargs=argparse.REMAINDER)
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None):
    """Run the `kprune` command line.

    Args:
        argv: the arguments without the program name (default:
            `sys.argv[1:]`).

    Returns:
        The exit status: 0 on success, 1 on an error (reported as one line
        `kprune: error: ...` on stderr), 2 on bad usage.

    Example:

    >>> main(["--help"])  # doctest: +SKIP
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        if argv and argv[0] == "demo":
            # Everything after `demo` belongs to the demo (options included).
            args = argparse.Namespace(run=_demo, args=argv[1:])
        else:
            args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if getattr(args, "calibration_samples", 1) < 1:
        print("kprune: error: --calibration-samples must be >= 1", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except CliError as error:
        message = _one_line(error)
    except (ValueError, TypeError, OSError, AssertionError) as error:
        # kprune reports bad input as ValueError/TypeError (surgery errors,
        # unsupported layers); VerificationError is an AssertionError.
        if os.environ.get("KPRUNE_TRACEBACK"):
            raise
        message = _one_line(error)
    print(f"kprune: error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

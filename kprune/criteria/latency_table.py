"""A per-layer LiteRT latency table, measured on this machine and cached.

`kprune.prune(..., latency=ms)` needs the latency of a model at widths it
has not built. The table measures each weighted layer of the model (Dense,
Conv, DepthwiseConv, SeparableConv) alone, exported to TFLite and timed with
the LiteRT interpreter (XNNPACK), at a grid of input and output widths
(fractions `grid` of the original, rounded to `round_to`), and predicts a
pruned model's latency as

    latency(widths) = sum_l T_l(in_l, out_l) + rest

with `T_l` interpolated bilinearly between grid points, scaled to the
measured latency of the whole model:

    latency(widths) = measured * sum_l T_l(in_l, out_l) / sum_l T_l(full)

The ops outside the table (additions, pooling, activations that XNNPACK
does not fuse, squeeze-excitation products, the interpreter's overhead)
are assumed to shrink in the same proportion as the table's layers (they
mostly scale with the same channel widths). An additive constant for them
(`measured - sum`) is the difference of two timings and, on a busy machine,
can be most of the model: a target below it is then unreachable on paper
and the search removes everything. `kprune.prune` then measures each
candidate side by side with the original model (`relative`) and corrects
its target, so the table need only rank candidates well.

Cache: one JSON file per machine, thread count and dtype in
`$KPRUNE_CACHE_DIR/latency/` (default `$XDG_CACHE_HOME/kprune/latency/`, i.e.
`~/.cache/kprune/latency/`), or `cache_dir=` given to the table. An entry's
key is the layer's class, its config without the name, its input shape and
the two widths; the file name holds the machine (host name, processor
model, core count), the thread count and the dtype. Delete the folder to
measure again.
"""

import hashlib
import json
import os
import platform
import shutil
import tempfile
import weakref

import numpy as np

from kprune.surgery.graph import Graph

_WEIGHTED = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
)
_DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D")
_WIDTH_KEY = {"Dense": "units", "DepthwiseConv1D": None, "DepthwiseConv2D": None}
_DROP = ("name", "trainable", "dtype", "kernel_initializer", "bias_initializer")


def default_cache_dir():
    """`$KPRUNE_CACHE_DIR/latency`, else `$XDG_CACHE_HOME/kprune/latency`,
    else `~/.cache/kprune/latency`."""
    root = os.environ.get("KPRUNE_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"
        )
        root = os.path.join(xdg, "kprune")
    return os.path.join(root, "latency")


def machine_id():
    """Host name, processor model and core count of this machine."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.node()}|{model}|{os.cpu_count()}cpu|{platform.machine()}"


def _grid_widths(size, grid, round_to):
    widths = set()
    for fraction in grid:
        width = max(1, int(round(size * fraction)))
        if round_to:
            width = min(size, max(round_to, -(-width // round_to) * round_to))
        widths.add(width)
    widths.add(size)
    return sorted(widths)


def _interp(points, values, x):
    """Linear interpolation (and extrapolation at the ends) on a sorted grid."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 1:
        return np.asarray(values)[0] * 0 + values[0]
    i = int(np.clip(np.searchsorted(points, x) - 1, 0, len(points) - 2))
    t = (x - points[i]) / (points[i + 1] - points[i])
    return values[i] * (1 - t) + values[i + 1] * t


class LatencyTable:
    """Per-layer LiteRT latency at candidate widths, cached on disk.

    Args:
        num_threads: LiteRT interpreter threads.
        dtype: "float32" or "int8" (full-integer quantization).
        grid: fractions of each layer's width to measure.
        round_to: round the measured widths up to multiples of this.
        runs: timed calls per measurement.
        statistic: "median" (default) or "min" of the timed calls (the
            least-contended run: steadier on a shared machine).
        clock: "wall" (default) or "cpu": time each call by the CPU time
            the process spends in it (`kprune.export.measure_tflite`), what
            a call costs on an idle core with `num_threads=1`; for a
            machine shared with other jobs, where wall times of long calls
            are inflated more than those of short ones.
        cache_dir: where the table files live (default:
            `default_cache_dir()`).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((16,)),
    ...     keras.layers.Dense(32, name="a"), keras.layers.Dense(4, name="b")])
    >>> table = LatencyTable(grid=(0.5, 1.0), runs=3,
    ...     cache_dir="/tmp/kprune_doc_latency")
    >>> table.build(model)
    >>> predict = table.predictor(model)
    >>> predict({"a": (16, 16), "b": (16, 4)}) > 0
    True
    """

    def __init__(
        self,
        num_threads=1,
        dtype="float32",
        grid=(0.25, 0.5, 0.75, 1.0),
        round_to=None,
        runs=20,
        cache_dir=None,
        statistic="median",
        clock="wall",
    ):
        if int(num_threads) < 1:
            raise ValueError(
                f"`num_threads` must be >= 1. Received: num_threads={num_threads!r}"
            )
        if dtype not in ("float32", "int8"):
            raise ValueError(
                f"`dtype` must be 'float32' or 'int8'. Received: dtype={dtype!r}"
            )
        grid = tuple(float(g) for g in grid)
        if not grid or any(not 0 < g <= 1 for g in grid):
            raise ValueError(
                f"`grid` must be fractions in (0, 1]. Received: grid={grid!r}"
            )
        self.num_threads = int(num_threads)
        self.dtype = dtype
        self.grid = grid
        self.round_to = round_to
        self.runs = int(runs)
        if statistic not in ("median", "min"):
            raise ValueError(
                "`statistic` must be 'median' or 'min'. "
                f"Received: statistic={statistic!r}"
            )
        self.statistic = statistic
        if clock not in ("wall", "cpu"):
            raise ValueError(
                f"`clock` must be 'wall' or 'cpu'. Received: clock={clock!r}"
            )
        self.clock = clock
        self.cache_dir = os.fspath(cache_dir) if cache_dir else default_cache_dir()
        self.machine = machine_id()
        tag = hashlib.sha1(self.machine.encode()).hexdigest()[:12]
        suffix = ("" if statistic == "median" else "-min") + (
            "" if clock == "wall" else "-cpu"
        )
        self.path = os.path.join(
            self.cache_dir, f"{tag}-t{self.num_threads}-{self.dtype}{suffix}.json"
        )
        self.entries = self._load()
        self.measured = 0  # measurements made (not read from the cache)

    # ----------------------------------------------------------------- cache
    def _load(self):
        if not os.path.isfile(self.path):
            return {}
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if data.get("machine") != self.machine:
            return {}
        return dict(data.get("entries", {}))

    def save(self):
        """Write the table file (atomically), keeping the entries that other
        tables (other processes) saved to it since this one was read."""
        os.makedirs(self.cache_dir, exist_ok=True)
        self.entries = {**self._load(), **self.entries}
        data = {
            "format": "kprune.latency_table",
            "machine": self.machine,
            "num_threads": self.num_threads,
            "dtype": self.dtype,
            "entries": self.entries,
        }
        tmp = self.path + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    # ------------------------------------------------------------ the table
    def _layers(self, model):
        """[(path, class, config, input_shape, in_size, out_size)] per weighted
        layer (first call)."""
        graph = Graph(model)
        seen, out = set(), []
        for node in graph.nodes:
            name = node.layer.__class__.__name__
            if name not in _WEIGHTED or node.path in seen:
                continue
            seen.add(node.path)
            if node.layer.get_config().get("groups", 1) != 1:
                continue
            shape = tuple(node.inputs[0].shape[1:])
            if any(d is None for d in shape):
                raise ValueError(
                    f"Layer '{node.path}' has an input of unknown shape {shape}; "
                    "build the model on a fixed input shape (e.g. "
                    "keras.Input((224, 224, 3))) for a latency table. "
                    f"Received: model={model.name}"
                )
            config = {
                k: v for k, v in node.layer.get_config().items() if k not in _DROP
            }
            out.append(
                (
                    node.path,
                    name,
                    config,
                    shape,
                    int(shape[-1]),
                    int(node.outputs[0].shape[-1]),
                )
            )
        return out

    def _key(self, name, config, shape, width_in, width_out):
        text = json.dumps(
            [name, config, list(shape[:-1]), width_in, width_out],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha1(text.encode()).hexdigest()

    def _entry(self, name, config, shape, width_in, width_out, measure=True):
        key = self._key(name, config, shape, width_in, width_out)
        if key not in self.entries:
            if not measure:
                return None
            from kprune.export.latency import layer_latency

            config = dict(config)
            width_key = _WIDTH_KEY.get(name, "filters")
            if width_key is not None:
                config[width_key] = int(width_out)
            self.entries[key] = layer_latency(
                name,
                config,
                tuple(shape[:-1]) + (int(width_in),),
                num_threads=self.num_threads,
                dtype=self.dtype,
                runs=self.runs,
                statistic=self.statistic,
                clock=self.clock,
            )
            self.measured += 1
        return self.entries[key]

    def _axes(self, name, size_in, size_out):
        ins = _grid_widths(size_in, self.grid, self.round_to)
        if name in _DEPTHWISE:
            return ins, [None]
        return ins, _grid_widths(size_out, self.grid, self.round_to)

    def build(self, model):
        """Measure every grid point of the model's weighted layers not yet in
        the cache, then save the table."""
        done = set()
        for _, name, config, shape, size_in, size_out in self._layers(model):
            ins, outs = self._axes(name, size_in, size_out)
            for width_in in ins:
                for width_out in outs:
                    key = self._key(name, config, shape, width_in, width_out)
                    if key in done:
                        continue
                    done.add(key)
                    self._entry(name, config, shape, width_in, width_out)
        self.save()

    def layer_ms(self, name, config, shape, size_in, size_out, width_in, width_out):
        """Interpolated latency of one layer at (width_in, width_out)."""
        ins, outs = self._axes(name, size_in, size_out)
        rows = []
        for a in ins:
            rows.append(
                [self._entry(name, config, shape, a, b, measure=True) for b in outs]
            )
        rows = np.asarray(rows, dtype=np.float64)
        if outs == [None]:
            return float(_interp(ins, rows[:, 0], width_in))
        column = np.array([_interp(outs, row, width_out) for row in rows])
        return float(_interp(ins, column, width_in))

    def predictor(self, model, latency=None):
        """`fn(widths) -> ms` for pruned versions of `model`.

        `widths` is `{layer path: (kept_in, kept_out)}` (None: unchanged);
        layers not named keep their full width. The prediction is the
        model's latency times the table's sum at these widths over its sum
        at full width (see the module docstring).

        Args:
            model: the `keras.Model` the widths refer to.
            latency: its measured latency in ms (measured here when None).
        """
        layers = self._layers(model)
        full = {
            path: self.layer_ms(name, config, shape, si, so, si, so)
            for path, name, config, shape, si, so in layers
        }
        measured = self.measure_model(model) if latency is None else float(latency)
        table_full = sum(full.values())
        scale = measured / table_full if table_full > 0 else 0.0
        rest = 0.0 if table_full > 0 else measured
        self.save()

        def predict(widths):
            total = 0.0
            for path, name, config, shape, si, so in layers:
                kin, kout = widths.get(path, (si, so))
                kin = si if kin is None else kin
                kout = so if kout is None else kout
                if (kin, kout) == (si, so):
                    total += full[path]
                else:
                    total += self.layer_ms(name, config, shape, si, so, kin, kout)
            return scale * total + rest

        return predict

    def relative(self, model, reference, runs=None, rounds=3):
        """Latency of `model` relative to `reference`, timed side by side.

        `kprune.export.relative_latency` with this table's threads, dtype
        and statistic; the reference's exported file is kept (in a
        temporary folder removed with the table) while `reference` is the
        same object, so checking several candidates exports it once.

        Returns:
            A dict: `model_ms`, `reference_ms`, `ratio`.
        """
        from kprune.export.latency import export_for_timing, relative_latency

        cached = getattr(self, "_reference", None)
        if cached is None or cached[0] is not reference:
            folder = tempfile.mkdtemp(prefix="kprune_reference_")
            weakref.finalize(self, shutil.rmtree, folder, True)
            path = export_for_timing(
                reference, os.path.join(folder, "reference.tflite"), self.dtype
            )
            self._reference = (reference, path)
        return relative_latency(
            model,
            self._reference[1],
            num_threads=self.num_threads,
            dtype=self.dtype,
            runs=runs or self.runs,
            rounds=rounds,
            statistic=self.statistic,
            clock=self.clock,
        )

    def measure_model(self, model, runs=None, rounds=3):
        """LiteRT latency of the whole model (ms), with this table's threads,
        dtype, statistic and clock: exported once and timed in `rounds`
        rounds of `runs` calls (`kprune.export.model_latency`); the
        statistic over all of them (a minimum over several rounds is
        steadier on a shared machine than over one).

        `kprune.prune(latency=...)` measures the original model with this;
        time a model the same way to set a target.
        """
        from kprune.export.latency import model_latency

        stats = model_latency(
            model,
            num_threads=self.num_threads,
            dtype=self.dtype,
            runs=runs or self.runs,
            clock=self.clock,
            rounds=rounds,
        )
        return float(stats[f"latency_ms_{self.statistic}"])

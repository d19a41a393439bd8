"""TF Select ops and conversion failures, said in one line.

LiteRT runs a `.tflite` file with its builtin kernels. TensorFlow ops it has
no builtin for (string hashing, tensor lists of an unrolled RNN, float16
matmuls of a mixed-precision model, some strided slices of attention masks)
can be kept as *TF Select* ("Flex") ops, which need the Select TF ops
runtime on the device (on Android the `tensorflow-lite-select-tf-ops`
dependency). The `ai_edge_litert` interpreter in Python has no Flex
delegate, so such a file cannot be run, hence not verified, here.

The converter reports a failure as dozens of MLIR lines; `conversion_error`
turns them into one sentence naming the failing ops and the flag that helps.
"""

import re

SELECT_FLAG = "`select_tf_ops=True` (CLI: `kprune export --select-tf-ops`)"


class ConversionError(ValueError):
    """The TFLite converter could not convert the model.

    The message is one line: the ops that failed and what would help.

    Attributes:
        ops: names of the TensorFlow ops that failed (may be empty).
        flag: `"select_tf_ops"` when converting with TF Select ops would
            help, else `None`.
        details: the converter's full message.

    Example:

    >>> issubclass(ConversionError, ValueError)
    True
    """

    def __init__(self, message, ops=(), flag=None, details=""):
        super().__init__(message)
        self.ops = list(ops)
        self.flag = flag
        self.details = details


class SelectOpsUnavailableError(RuntimeError):
    """The file uses TF Select ops, which the LiteRT interpreter here cannot run.

    Example:

    >>> issubclass(SelectOpsUnavailableError, RuntimeError)
    True
    """


class UnverifiedExportWarning(UserWarning):
    """`to_tflite` wrote a file it could not verify (TF Select ops).

    Example:

    >>> issubclass(UnverifiedExportWarning, UserWarning)
    True
    """


def _unique(items):
    return list(dict.fromkeys(items))


def _listed(text, label):
    """Names after a `label: A, B` line of the converter's message."""
    found = []
    for match in re.finditer(re.escape(label) + r"\s*([^\n]*)", text):
        found += [n.strip() for n in match.group(1).split(",") if n.strip()]
    return _unique(found)


def _failing_tf_ops(text):
    names = re.findall(r"'tf\.(\w+)' op", text)
    names += re.findall(r"legalize operation 'tf\.(\w+)'", text)
    return _unique(names)


def _first_error(text):
    for line in text.splitlines():
        if "error:" in line:
            line = line.split("error:", 1)[1]
            return " ".join(line.split())[:300]
    return " ".join(text.split())[:300]


def conversion_error(error, select_tf_ops, low_precision=None):
    """A `ConversionError` with a one-line message for a converter failure.

    Args:
        error: the exception raised by `TFLiteConverter.convert()`.
        select_tf_ops: whether the conversion already allowed TF Select ops.
        low_precision: the model's compute dtype when it is not float32
            (e.g. `"float16"` under `mixed_float16`), for a hint; or `None`.

    Returns:
        A `ConversionError` (to raise).

    Example:

    >>> text = "error: ...\\nTF Select ops: StringToHashBucketFast\\nDetails: ..."
    >>> message = str(conversion_error(RuntimeError(text), select_tf_ops=False))
    >>> "StringToHashBucketFast" in message and "select_tf_ops=True" in message
    True
    """
    text = str(error)
    select = _listed(text, "TF Select ops:")
    custom = _listed(text, "Custom ops:")
    failing = _failing_tf_ops(text)
    hint = ""
    if low_precision:
        hint = (
            f" The model computes in {low_precision} (a mixed-precision "
            "policy): for a float32 file, rebuild it under "
            "keras.mixed_precision.set_global_policy('float32') and copy the "
            "weights."
        )
    if custom:
        ops = custom
        message = (
            "TFLite conversion failed: neither LiteRT's builtin ops nor TF "
            f"Select ops have a kernel for {', '.join(ops)}; no flag helps: "
            "replace the layer that uses it, or write a LiteRT custom op."
        )
        flag = None
    elif not select_tf_ops and (
        select or "tensor list ops" in text or "ERROR_NEEDS_FLEX_OPS" in text
    ):
        ops = select or failing
        what = f" ({', '.join(ops)})" if ops else ""
        message = (
            "TFLite conversion failed: the model needs TensorFlow ops that "
            f"LiteRT has no builtin kernel for{what}. Pass {SELECT_FLAG} to "
            "keep them as TF Select ops (the app then needs the Select TF ops "
            "runtime)."
        )
        flag = "select_tf_ops"
    else:
        ops = select or failing
        what = f" at the ops {', '.join(ops)}" if ops else ""
        with_select = " (with TF Select ops)" if select_tf_ops else ""
        message = f"TFLite conversion failed{with_select}{what}: {_first_error(text)}"
        flag = None
    return ConversionError(message + hint, ops=ops, flag=flag, details=text)


def tf_select_ops(tflite):
    """The TF Select ("Flex") ops a `.tflite` file uses.

    Args:
        tflite: a path to a `.tflite` file, or its bytes.

    Returns:
        A sorted list of TensorFlow op names (`"StringToHashBucketFast"`
        for the file's `FlexStringToHashBucketFast`); empty when the file
        uses builtin ops only.

    Example:

    >>> import keras
    >>> from kprune.export import to_tflite
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> tf_select_ops(to_tflite(model, "/tmp/kprune_doc_select.tflite"))
    []
    """
    from ai_edge_litert import schema_py_generated as schema

    if isinstance(tflite, (bytes, bytearray)):
        content = bytes(tflite)
    else:
        with open(tflite, "rb") as f:
            content = f.read()
    model = schema.Model.GetRootAsModel(content, 0)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i).CustomCode()
        if code and code.startswith(b"Flex"):
            names.add(code[len(b"Flex") :].decode("utf-8", "replace"))
    return sorted(names)


def is_select_ops_failure(error):
    """Whether an interpreter error says it cannot run TF Select ops.

    Example:

    >>> is_select_ops_failure(RuntimeError("Select TensorFlow op(s), included"))
    True
    """
    return "Select TensorFlow op" in str(error)

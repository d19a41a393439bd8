"""Atomic file output: a file appears complete, or not at all.

Every file kprune writes for a user (the CLI's models, `.tflite` files,
reports, the demo's logs) goes through `atomic_path`: the content is written
to a temporary file in the destination folder, and only when writing (and
any check the caller runs inside the block) succeeded is it renamed onto the
destination with `os.replace`, which is atomic on POSIX and Windows. On any
exception, `KeyboardInterrupt` included, the temporary file is removed and
the destination is untouched: a failure never leaves a half-written or
unverified file behind, and never destroys the file that was there.

This module is at the ground layer (standard library only), so every layer
of kprune can use it.
"""

import contextlib
import os
import secrets

TEMP_MARK = ".kprune-tmp-"


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path that replaces `path` when the block succeeds.

    The temporary file lives in the folder of `path` (so the final rename
    never crosses file systems), starts with `.`, contains `.kprune-tmp-`
    and keeps the suffix of `path` (Keras checks that a model file ends
    with `.keras`). It exists, empty, when the block starts.

    Args:
        path: the destination file.

    Yields:
        The temporary path (a string) to write to.

    Raises:
        OSError: the folder of `path` does not exist or is not writable (the
            message names `path`), or the final rename failed.

    Example:

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> target = os.path.join(folder, "report.txt")
    >>> with atomic_path(target) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("done")
    >>> open(target).read(), os.listdir(folder)
    ('done', ['report.txt'])
    >>> try:
    ...     with atomic_path(target) as tmp:
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     pass
    >>> open(target).read(), os.listdir(folder)  # untouched, nothing left
    ('done', ['report.txt'])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    suffix = os.path.splitext(base)[1]
    while True:
        tmp = os.path.join(folder, f".{base}{TEMP_MARK}{secrets.token_hex(4)}{suffix}")
        try:
            # Mode 0o666 minus the umask: the file gets the permissions a
            # plain open() would give it.
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        except OSError as error:
            raise OSError(
                error.errno, f"cannot write {path}: {error.strerror or error}"
            ) from None
        break
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Write `text` to `path` atomically (UTF-8).

    Args:
        path: the destination file.
        text: a string.

    Returns:
        `path`.

    Example:

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "plan.json")
    >>> write_text(target, "{}") == target
    True
    """
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def write_bytes(path, data):
    """Write `data` to `path` atomically.

    Args:
        path: the destination file.
        data: bytes.

    Returns:
        `path`.

    Example:

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> write_bytes(target, b"abc") == target
    True
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path

"""Files the lab writes and reads: every write is atomic, every model or checkpoint load is pickle-free.

- **Atomic writes** (:func:`atomic_write` and the helpers on it): the bytes go to ``PATH.tmp-PID`` beside the
  target, are fsynced, and the file is renamed over ``PATH`` (then the folder is fsynced). An interruption
  (Ctrl-C, a kill, a full disk) leaves the previous file intact; the temporary file is removed on any exception
  (a SIGKILL can leave one, which the next run of the same command removes or overwrites). A full disk is a
  :class:`CommandError` that says how many bytes the file needed, and with ``size`` known the space is reserved
  (``posix_fallocate``) before the first byte is written.
- **Loads** (:func:`load_torch`): ``torch.load(..., weights_only=True)``, which unpickles only tensors and plain
  containers (dict, list, tuple, str, numbers): a crafted ``model.pt`` cannot run code. The lab's model and
  checkpoint files hold only such values (configs as dicts, state dicts, generator states as byte tensors).
"""
from __future__ import annotations

import errno
import json
import os
import pickle
from typing import Callable

from .errors import CommandError

TMP_MARK = ".tmp-"


def temporary_name(path: str) -> str:
    return f"{path}{TMP_MARK}{os.getpid()}"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_space(path: str, size: int | None) -> CommandError:
    need = f": it needs {size:,} bytes" if size is not None else ""
    return CommandError(f"no space left on the device of {path}{need}; free some space and rerun (what finished "
                        "is kept)")


def reserve(f, size: int, path: str) -> None:
    """Allocates ``size`` bytes for the open file ``f`` before it is written, where the filesystem can: a full disk
    then fails here, with a message, instead of part-way through (or, for a memory map, with SIGBUS)."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except AttributeError:  # no posix_fallocate on this platform: the writes themselves report ENOSPC
        pass
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise no_space(path, size) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def atomic_write(path: str, write: Callable, *, size: int | None = None,
                 verify: Callable[[str], None] | None = None) -> None:
    """``write(f)`` into a temporary file beside ``path`` (``size`` bytes reserved first when given), fsync,
    ``verify(temporary path)`` if given (it raises to refuse the file), rename over ``path``, fsync the folder
    (see the module docstring)."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            if size:
                reserve(f, size, path)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise no_space(path, size) from None
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_json(obj, path: str) -> None:
    """JSON (indented, one trailing newline) to ``path``, atomically."""
    data = (json.dumps(obj, indent=1) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str, what: str) -> dict:
    """The JSON object at ``path``; a damaged (empty, truncated, not an object) file is a :class:`CommandError`
    that names it as ``what``."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CommandError(f"{path} ({what}) is damaged: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CommandError(f"{path} ({what}) is damaged: not a JSON object")
    return obj


def save_torch(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path``, atomically; ``obj`` must hold only what :func:`load_torch` reads back."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: str, what: str, keys=()) -> dict:
    """The dict saved at ``path`` by :func:`save_torch`, loaded without unpickling code (``weights_only=True``).

    A file that needs more than tensors and plain containers (a crafted pickle, or a file of another program), a
    damaged file, or one without the ``keys`` it must hold is a :class:`CommandError` naming it as ``what``."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CommandError(f"{path} is not a {what} that gmm-triton can load safely ({first}); it was made by "
                           "something else, is damaged, or would run code when unpickled: it was not loaded") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CommandError(f"{path} is not a {what}: it lacks {', '.join(missing)}")
    return obj


def savefig(fig, path: str, **kwargs) -> None:
    """``fig.savefig`` to ``path``, atomically (the format is taken from ``path``'s extension)."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))

"""The run directory of ``clvr train`` (``--out``): checked before anything heavy is built, and
every write into it reported by path when the disk is full.

:func:`check_out` turns an unusable ``--out`` (empty, a file, under a file, not writable) into
one line naming the path, before the data pipeline or the model exists. :func:`write_error` is
the error a failed write stops a run with: for a full disk or an exceeded quota
(:func:`disk_full`), which file could not be written and which checkpoint is the last good one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import MethodError, TrainingError

#: errors that mean the file system has no room (a full disk, or a user's quota on a cluster)
NO_ROOM = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class RunDirError(MethodError):
    """``--out`` cannot hold a run; the message names the path and why."""


def check_out(out) -> Path:
    """``out`` as a Path once it is a writable directory (created with its parents if needed);
    :class:`RunDirError` naming the path otherwise. A probe file is written and removed, so a
    read-only mount or a folder of another user is found here, not at the first checkpoint."""
    text = os.fspath(out) if out is not None else ""
    if not str(text).strip():
        raise RunDirError("--out is empty: give the run directory (it is created; default runs/run)")
    path = Path(text)
    try:
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--out {path} is a file, not a directory: give a folder for the run "
                              "(it is created if missing)")
        for above in path.parents:
            if above.exists():
                if not above.is_dir():
                    raise RunDirError(f"--out {path}: {above} is a file, so no folder can be made under it")
                break
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:            # a folder above that this user cannot enter, a read-only mount...
        raise RunDirError(f"--out {path}: cannot create the run directory ({e.strerror})") from None
    probe = path / f".clvr-write-test.{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"clvr")
    except OSError as e:
        raise RunDirError(f"--out {path} is not writable ({e.strerror}): choose a folder you can write to")
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return path


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it was raised from) is a full disk or an exceeded quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            return True
        error = error.__cause__ or error.__context__
    return False


def write_error(path, error: OSError, run_dir) -> TrainingError:
    """The error to stop a run with when writing ``path`` of ``run_dir`` failed: for a full disk,
    which file and the last good checkpoint; otherwise the file and the system's reason."""
    if disk_full(error):
        from .checkpoint import latest_checkpoint
        last = latest_checkpoint(run_dir) or "none (nothing was saved yet)"
        return TrainingError(f"disk full while writing {path}; the last good checkpoint is {last}. Free some "
                             "space (or lower keep=) and resume with --resume auto")
    return TrainingError(f"cannot write {path} ({error.strerror or error})")

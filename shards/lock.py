"""One writer per output directory: ``OUT/.clvr-shard.lock`` holds the writer's host and pid.

A lock whose process is gone (killed, crashed) is stale and is taken over; a lock held by a
live process, or by another host, is refused with a message saying how to proceed.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .errors import ShardError

LOCK_NAME = ".clvr-shard.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.stale_taken_over = False

    def acquire(self) -> "OutputLock":
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    holder = {}
                host, pid = holder.get("host"), holder.get("pid")
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    self.path.unlink(missing_ok=True)
                    self.stale_taken_over = True
                    continue
                raise ShardError(
                    f"{self.path.parent}: another 'clvr shard' is writing here "
                    f"(pid {pid} on host {host}); wait for it to finish. If it is gone, delete "
                    f"{self.path} and re-run.")
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise ShardError(f"{self.path}: could not take the output lock")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

"""One writer per output directory: an exclusive ``flock`` on ``OUT/.clvr-shard.lock`` (``clvr
shard``) or ``OUT/.clvr-train.lock`` (``clvr train``, a run directory).

The kernel drops the lock when its process ends, however it ends (crash, SIGKILL), so a lock
left by a dead writer never blocks the next run, and there is no window in which two writers
can both decide that a stale lock is theirs. The file holds the writer's host and pid, for the
message that refuses a second writer; a file left by a writer that died is taken over, and
``taken_over`` says whose it was.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from .errors import ShardError

LOCK_NAME = ".clvr-shard.lock"


_HELD: set[int] = set()  # lock descriptors of this process, closed in every forked child


def _close_in_child() -> None:
    # A child holding the descriptor would keep the lock after the writer died (the kernel
    # drops an flock only when its last descriptor closes), so children never keep one.
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class OutputLock:
    def __init__(self, out: Path, name: str = LOCK_NAME, command: str = "clvr shard", choose: str = "OUT"):
        self.path = Path(out) / name
        self.command, self.choose = command, choose
        self.fd: int | None = None
        self.taken_over: dict | None = None    # host and pid in a file left by a writer that died

    def acquire(self) -> "OutputLock":
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except IsADirectoryError:
                raise ShardError(f"{self.path}: is a folder, not clvr's lock file; remove it") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                who = (f"pid {holder['pid']} on host {holder.get('host')}" if "pid" in holder
                       else "it is just starting")
                raise ShardError(
                    f"{self.path.parent}: another '{self.command}' is writing here ({who}); wait for it to "
                    f"finish, or choose another {self.choose}") from None
            # The previous holder may have removed the file between our open and our lock: then we
            # hold a lock on a file nobody else can see, and must start again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = self._holder(fd)
        self.taken_over = left if "pid" in left else None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        self.fd = fd
        _HELD.add(fd)
        return self

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # still locked: a newcomer sees no file, or ours
            _HELD.discard(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

"""One writer per output directory: an exclusive ``flock`` on ``OUT/.clvr-shard.lock`` (``clvr
shard``) or ``OUT/.clvr-train.lock`` (``clvr train``, a run directory).

The kernel drops the lock when its process ends, however it ends (crash, SIGKILL), so a lock
left by a dead writer never blocks the next run, and there is no window in which two writers
can both decide that a stale lock is theirs. The file holds the writer's host and pid, for the
message that refuses a second writer; a file left by a writer that died is taken over, and
``taken_over`` says whose it was.

A lock covers the tree below its folder: a writer into ``OUT`` is refused while another writes
into a folder above ``OUT`` (``clvr shard ... NX`` writing ``NX/train``) or below it, and the
other way round. Each writer first takes its own lock and then looks for held ones above and
below, so of two writers that start together at least one sees the other.
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


def _held_by(path: Path) -> dict | None:
    """The holder (host, pid) of the lock file ``path`` when a live writer holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        holder = OutputLock._holder(fd)
        if holder.get("host") == socket.gethostname() and "pid" in holder:
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return None                  # its writer died: a file left behind
            except (PermissionError, ValueError, OverflowError):
                pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder                    # held
        return None                          # nobody holds it (closing the file lets it go)
    finally:
        os.close(fd)


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
        try:
            self._check_tree()
        except ShardError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        self.fd = fd
        _HELD.add(fd)
        return self

    def _check_tree(self) -> None:
        """Refuse when a lock of the same name is held in a folder above or below ours."""
        top = self.path.parent.resolve()
        name = self.path.name
        above = [d / name for d in top.parents]
        below = [p for p in top.rglob(name) if p.parent != top] if top.is_dir() else []
        for other in above + below:
            holder = _held_by(other)
            if holder is not None:
                who = f"pid {holder['pid']} on host {holder.get('host')}" if "pid" in holder else "another process"
                where = "above" if other in above else "inside"
                raise ShardError(f"{self.path.parent}: another '{self.command}' is writing into {other.parent}, "
                                 f"a folder {where} it ({who}); wait for it to finish, or choose another "
                                 f"{self.choose} outside it")

    @staticmethod
    def _holder(fd: int) -> dict:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def __repr__(self) -> str:
        return f"OutputLock({self.path})"

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

"""Workers outlive a killed launcher: the check that stops them.

``accelerate launch`` (torch's elastic agent) starts each worker in a session of its own, so a
``kill -9`` of the launcher's process group leaves the workers training and writing on, and a
``--resume auto`` started then collides with them. :class:`LauncherWatch` notices within a
second that a worker's parent has gone (the worker is re-parented) and calls back, so the trainer
stops every process at the next step with a checkpoint (its agreed stop). Should a process not
stop within ``grace`` seconds (another worker died too, and a collective waits for it), it exits
at once with a line saying why rather than hang on.
"""

from __future__ import annotations

import os
import sys
import threading

#: environment variables a launcher (torchrun, accelerate launch) sets in its workers
LAUNCHED_BY = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")
#: seconds a worker whose launcher is gone has to stop before it exits without a checkpoint
GRACE_SECONDS = float(os.environ.get("CLVR_ORPHAN_GRACE_SECONDS", "30"))


def launched() -> bool:
    """Whether this process was started by a launcher (not by a shell: a shell's exit, as with
    ``nohup``, must not stop a run)."""
    return any(name in os.environ for name in LAUNCHED_BY)


class LauncherWatch:
    """Polls the parent pid every ``every`` seconds from a daemon thread."""

    def __init__(self, on_gone, every: float = 0.5, grace: float = GRACE_SECONDS):
        self.parent = os.getppid()
        self.on_gone, self.every, self.grace = on_gone, every, grace
        self.gone = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="clvr-launcher-watch", daemon=True)

    @classmethod
    def start_if_launched(cls, on_gone, **kw) -> "LauncherWatch | None":
        if not launched():
            return None
        watch = cls(on_gone, **kw)
        watch._thread.start()
        return watch

    def stop(self) -> None:
        """The run is over: stop watching (and never exit the process). The thread is joined: a
        daemon thread still waiting when the interpreter shuts down is ended by pthread_exit,
        which can abort the process ("terminate called without an active exception")."""
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._done.wait(self.every):
            if os.getppid() != self.parent:
                self.gone = True
                self.on_gone(self.parent)
                if not self._done.wait(self.grace):
                    print(f"clvr train: the launcher (pid {self.parent}) is gone and this process did not stop "
                          f"within {self.grace:g} s (another process is gone too?); exiting without a checkpoint",
                          file=sys.stderr, flush=True)
                    os._exit(1)
                return

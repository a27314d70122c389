"""Progress on stderr for long commands: a tqdm bar on a terminal, plain lines elsewhere.

When stderr is not a terminal (Slurm, ``nohup``, CI, ``make demo > log``), a bar's redraws would
fill the log; :func:`bar` then gives a :class:`PlainBar`, which prints one line every
``CLVR_PROGRESS_SECONDS`` (30 by default) with the count, the rate, the time left and the bar's
fields, and a last line when it closes. :class:`Progress` (samples/s, MB/s and the reject count
of ``clvr shard``) is built on it.
"""

from __future__ import annotations

import os
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class PlainBar:
    """The part of tqdm's interface clvr uses, as a line every ``interval`` seconds."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 interval: float | None = None, file=None, **_):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval = float(os.environ.get("CLVR_PROGRESS_SECONDS", 30)) if interval is None else interval
        self.file = file or sys.stderr
        self.start = self.last = time.perf_counter()
        self.initial, self.postfix = initial, ""

    def _line(self, done: bool = False) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.3g} {self.unit}/s, {_duration(elapsed)} elapsed")
        if self.total and not done and rate > 0:
            parts.append(f"{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        end = " (done)" if not self.total or self.n >= self.total else " (stopped)"
        return ", ".join(parts) + (end if done else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            print(self._line(), file=self.file, flush=True)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        fields = dict(ordered_dict or {}, **kwargs)
        self.postfix = " ".join(f"{k}={v}" for k, v in fields.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def write(self, s: str) -> None:
        print(s, file=self.file, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.file is not None:
            print(self._line(done=True), file=self.file, flush=True)
            self.file = None


def bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, leave: bool = True):
    """A tqdm bar on stderr when it is a terminal, else a :class:`PlainBar`."""
    if sys.stderr.isatty():
        from tqdm import tqdm  # imported only when shown: it costs a tenth of a second
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5,
                    dynamic_ncols=True, leave=leave)
    return PlainBar(total, desc, unit, initial)


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "sample"):
        self.bar = bar(total, desc, unit, initial) if enabled else None
        self.start = time.perf_counter()
        self.bytes = 0
        self.rejects = 0
        self.count = 0

    def update(self, n: int = 1, nbytes: int = 0, rejected: bool = False) -> None:
        self.bytes += nbytes
        self.rejects += int(rejected)
        self.count += n
        if self.bar is None:
            return
        self.bar.update(n)
        if self.count % 64 == 0 or rejected:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(MBps=f"{self.bytes / elapsed / 1e6:.1f}", rejects=self.rejects,
                                 refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

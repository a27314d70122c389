"""``RUN/metrics.jsonl``: one JSON object per line, written by the main process of ``clvr train``.

Lines are ``{"step", "epoch", "lr", "images_per_s", "loss", ...}`` every ``log_every`` steps, kNN
lines ``{"step", "epoch", "knn_top1", ...}``, and event lines ``{"step", "event": ...}``
(``skipped``, ``collapse``, ``unlabelled``, ``resumed``). :class:`MetricsLog` is the one writer:
each line is flushed as it is written, and a full disk is reported as such, with the last good
checkpoint. :meth:`MetricsLog.cut_back` drops what a resumed run is about to log again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .run_dir import write_error

#: the file's name in a run directory
METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends lines to ``run_dir/metrics.jsonl``."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / METRICS
        self._file = None

    def open(self) -> "MetricsLog":
        try:
            self._file = open(self.path, "a")
        except OSError as e:
            self._fail(e)
        return self

    def write(self, record: dict) -> None:
        """Append ``record`` as one line and flush it."""
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:
            self._fail(e)

    def close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError:
                pass                    # a line that could not be flushed was reported by write()

    def _fail(self, e: OSError):
        raise write_error(self.path, e, self.path.parent) from None

    def cut_back(self, step: int) -> int:
        """Drop the lines logged after ``step`` (those a resumed run logs again) and a line cut off
        by a kill; returns how many were dropped. Lines without a step are kept. The file is
        replaced atomically."""
        from ..shards.fileio import write_atomic
        if not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            step_of = record.get("step") if isinstance(record, dict) else None
            if isinstance(step_of, (int, float)) and not isinstance(step_of, bool) and step_of > step:
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            try:
                write_atomic(self.path, "".join(x + "\n" for x in kept).encode(), f".{os.getpid()}.tmp")
            except OSError as e:
                self._fail(e)
        return dropped

"""``OUT/rejects.jsonl``: one line per rejected or converted input, with the reason.

Every line has ``src`` (the file, or the file and line), ``split``, ``what`` (``sample``,
``box`` or ``line``), ``action`` (``rejected`` or ``converted``) and ``reason``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .format import json_bytes

REJECTS_NAME = "rejects.jsonl"


class RejectLog:
    def __init__(self, out: Path, truncate_to: int | None = None):
        """A new log, or -- resuming -- the old one cut back to ``truncate_to`` bytes and recounted."""
        self.path = Path(out) / REJECTS_NAME
        self.counts: Counter = Counter()
        if truncate_to is None or not self.path.exists():
            self.file = open(self.path, "wb")
            return
        self.file = open(self.path, "r+b")
        self.file.truncate(truncate_to)
        self.file.seek(truncate_to)
        with open(self.path, "rb") as f:
            for line in f:
                entry = json.loads(line)
                self.counts[(entry["action"], entry["what"])] += 1

    def add(self, src: str, reason: str, action: str = "rejected", what: str = "sample",
            split: str | None = None, **extra) -> None:
        entry = {"src": src, "split": split, "what": what, "action": action, "reason": reason, **extra}
        self.file.write(json_bytes(entry) + b"\n")
        self.counts[(action, what)] += 1

    def count(self, action: str, what: str | None = None) -> int:
        return sum(n for (a, w), n in self.counts.items() if a == action and (what is None or w == what))

    def position(self) -> int:
        self.file.flush()
        return self.file.tell()

    def close(self) -> None:
        self.file.close()

"""``SampleMap``: where each sample of a local shard set lies, found from what DALI reports.

DALI gives each sample's source as ``"tar:offset:member"`` (the tar, the byte offset of the
member it read, and the name the index file gives it). The map answers, from the tar and the
offset alone (names may be encoded, or carry colons and spaces): which sample of which shard
it is (its position in the index file), its global index when the set numbers its samples by
order (``clvr shard index``), its label from the side file, and its key for messages (read
lazily: a set of a million samples keeps only sorted offsets in memory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .errors import PipelineError
from .source import IndexedSample, Shard, read_index


@dataclass
class _Tar:
    shard: Shard
    offsets: np.ndarray             # every component's data offset, sorted
    positions: np.ndarray           # the sample (position in the index file) of each offset
    labels: np.ndarray | None       # side file labels, by position
    keys: list | None = field(default=None, repr=False)

    def position(self, offset: int) -> int | None:
        i = int(np.searchsorted(self.offsets, offset))
        if i < len(self.offsets) and int(self.offsets[i]) == offset:
            return int(self.positions[i])
        return None


class SampleMap:
    def __init__(self, by_order: bool):
        self.by_order = by_order
        self.tars: dict[str, _Tar] = {}          # real path -> its samples
        self.paths: dict[str, str] = {}           # the path DALI is given -> real path

    def add(self, shard: Shard, entries: list[IndexedSample]) -> None:
        real = os.path.realpath(shard.tar)
        offsets = np.fromiter((o for e in entries for o in e.offsets), dtype=np.int64)
        positions = np.fromiter((p for p, e in enumerate(entries) for _ in e.offsets), dtype=np.int64)
        order = np.argsort(offsets, kind="stable")
        labels = None
        if any(e.label is not None for e in entries):
            labels = np.array([-1 if e.label is None else e.label for e in entries], dtype=np.int64)
        self.tars[real] = _Tar(shard, offsets[order], positions[order], labels)
        self.paths[shard.tar] = real

    def parse(self, text: str) -> tuple[str, int, str]:
        """(real tar path, offset, member) of a "tar:offset:member" source (tar paths and
        member names may hold colons: the tar is found among this set's tars)."""
        colon = text.find(":")
        while colon >= 0:
            if text[:colon] in self.paths:
                offset, _, member = text[colon + 1:].partition(":")
                if offset.isdigit():
                    return self.paths[text[:colon]], int(offset), member
            colon = text.find(":", colon + 1)
        raise PipelineError(f"DALI reported a sample from {text!r}, which is in none of the set's tars")

    def locate(self, real: str, offset: int) -> tuple[_Tar, int] | None:
        tar = self.tars.get(real)
        position = tar.position(offset) if tar is not None else None
        return None if position is None else (tar, position)

    def global_index(self, real: str, offset: int, member: str) -> int:
        found = self.locate(real, offset)
        if found is None or found[0].shard.first_index is None:
            raise PipelineError(f"{real}: the member {member} at byte {offset} is not in the shard set's index "
                                "files (re-run clvr shard index)")
        return found[0].shard.first_index + found[1]

    def label(self, real: str, offset: int) -> int:
        found = self.locate(real, offset)
        if found is None or found[0].labels is None:
            return -1
        return int(found[0].labels[found[1]])

    def key(self, real: str, offset: int, member: str = "") -> str:
        """The sample's true key (from its side file, if any), else its member's."""
        found = self.locate(real, offset)
        if found is None:
            return member.rsplit(".", 1)[0] if member else f"at byte {offset}"
        tar, position = found
        if tar.keys is None:
            tar.keys = [e.key for e in read_index(tar.shard.index, samples_file=tar.shard.samples_file)]
        return tar.keys[position]

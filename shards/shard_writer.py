"""Writing WebDataset tar shards, byte-for-byte deterministic, with their DALI index files.

A shard is written as ``NAME.tar.tmp`` and renamed to ``NAME.tar`` only when complete (its
index ``NAME.idx`` likewise), so a killed run never leaves a file that looks whole. With
``fsync`` each shard is also flushed to disk before the rename, which guards against a power
loss too, at some cost in speed; without it, ``clvr shard verify`` (sha256) still catches a
shard torn by a crash of the machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .dali_index import IndexedComponent, format_index
from .fileio import write_atomic

BLOCK = 512
_ZEROS = bytes(BLOCK)
TMP_SUFFIX = ".tmp"


@dataclass
class ShardRecord:
    """One finished shard, as the manifest lists it."""

    name: str          # file name of the tar, relative to the shard set's directory
    index: str         # file name of the DALI index
    samples: int
    bytes: int
    sha256: str
    first_index: int   # global index of its first sample

    def to_json(self) -> dict:
        return asdict(self)


def _member_header(name: str, size: int) -> bytes:
    """The 512-byte POSIX ustar header of a regular file, as ``tarfile`` writes it with
    mode 0644, uid/gid 0, mtime 0 and no user names -- built directly, since ``TarInfo.tobuf``
    costs more than everything else the writer does per member."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"member name too long for ustar: {name!r}")
    size_field = b"%011o\0" % size
    checksum = sum(raw) + sum(size_field) + _CONSTANT_SUM
    return (raw.ljust(100, b"\0") + _MODE_UID_GID + size_field + _MTIME + b"%06o\0 " % checksum
            + _TYPE_TO_DEVMINOR + _PADDING)


_MODE_UID_GID = b"0000644\0" + b"0000000\0" + b"0000000\0"
_MTIME = b"00000000000\0"
# typeflag '0', linkname, magic+version, uname, gname, devmajor, devminor
_TYPE_TO_DEVMINOR = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * 32 + b"\0" * 32 + b"\0" * 16
_PADDING = b"\0" * 167  # prefix (155) + pad (12)
# the checksum counts its own field as 8 spaces
_CONSTANT_SUM = sum(_MODE_UID_GID) + sum(_MTIME) + sum(_TYPE_TO_DEVMINOR) + 8 * 32


class _OpenShard:
    def __init__(self, directory: Path, name: str, first_index: int, fsync: bool = False):
        self.directory = directory
        self.fsync = fsync
        self.name = name
        self.tmp = directory / (name + ".tar" + TMP_SUFFIX)
        self.file = open(self.tmp, "wb")
        self.sha = hashlib.sha256()
        self.offset = 0
        self.samples: list[list[IndexedComponent]] = []
        self.first_index = first_index

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.sha.update(data)
        self.offset += len(data)

    def add(self, key: str, components: list[tuple[str, bytes]]) -> None:
        entries, parts = [], []
        offset = self.offset
        for ext, data in components:
            member = f"{key}.{ext}"
            parts.append(_member_header(member, len(data)))
            offset += BLOCK
            entries.append(IndexedComponent(ext, offset, len(data), member))
            parts.append(data)
            pad = -len(data) % BLOCK
            if pad:
                parts.append(_ZEROS[:pad])
            offset += len(data) + pad
        self._write(b"".join(parts))  # one write and one hash update per sample
        assert self.offset == offset
        self.samples.append(entries)

    def finish(self) -> ShardRecord:
        self._write(b"\0" * (2 * BLOCK))  # end-of-archive marker
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())
        self.file.close()
        write_atomic(self.directory / (self.name + ".idx"), format_index(self.samples).encode(), TMP_SUFFIX)
        os.replace(self.tmp, self.directory / (self.name + ".tar"))
        return ShardRecord(self.name + ".tar", self.name + ".idx", len(self.samples), self.offset,
                           self.sha.hexdigest(), self.first_index)

    def abandon(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def sample_bytes(components: list[tuple[str, bytes]]) -> int:
    return sum(BLOCK + len(d) + (-len(d) % BLOCK) for _, d in components)


class ShardWriter:
    """Append samples; shards roll over at ``max_samples`` samples or ``max_bytes`` bytes.

    ``on_shard`` is called with each finished :class:`ShardRecord` (the resume journal hooks in here).
    """

    def __init__(self, directory, prefix: str = "shard", max_samples: int = 1000,
                 max_bytes: int | None = None, start_shard: int = 0, on_shard=None, fsync: bool = False):
        if max_samples < 1:
            raise ValueError("--shard-size must be at least 1")
        if max_bytes is not None and max_bytes < 3 * BLOCK:
            raise ValueError(f"--max-shard-bytes must be at least {3 * BLOCK}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.next_shard = start_shard
        self.on_shard = on_shard
        self.fsync = fsync
        self.current: _OpenShard | None = None
        self._opening: Path | None = None
        self.records: list[ShardRecord] = []

    def shard_name(self, number: int) -> str:
        return f"{self.prefix}-{number:06d}"

    def write(self, index: int, key: str, components: list[tuple[str, bytes]]) -> None:
        cur = self.current
        if cur is not None:
            full = len(cur.samples) >= self.max_samples
            too_big = (self.max_bytes is not None
                       and cur.offset + sample_bytes(components) + 2 * BLOCK > self.max_bytes)
            if full or too_big:
                self._finish()
        if self.current is None:
            name = self.shard_name(self.next_shard)
            # an interruption between the open and the assignment must not strand the file
            self._opening = self.directory / (name + ".tar" + TMP_SUFFIX)
            self.current = _OpenShard(self.directory, name, index, self.fsync)
            self.next_shard += 1
        self.current.add(key, components)

    def _finish(self) -> None:
        record = self.current.finish()
        self.current = None
        self.records.append(record)
        if self.on_shard is not None:
            self.on_shard(record)

    def close(self) -> list[ShardRecord]:
        if self.current is not None:
            self._finish()
        return self.records

    def abandon(self) -> None:
        """Remove the shard being written; safe whatever line an interruption (Ctrl-C) hit."""
        if self.current is not None:
            self.current.abandon()
            self.current = None
        if self._opening is not None:
            self._opening.unlink(missing_ok=True)

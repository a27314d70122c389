"""DALI webdataset index files (the format DALI's ``wds2idx`` writes, version v1.2).

Line 1: ``v1.2 <number of samples>``. Then one line per sample, listing for each of its
components ``<ext> <data offset> <size> <member name>``. Offsets point at the member's data
(its 512-byte tar header lies just before), so they are multiples of 512.

clvr writes these while sharding, so DALI's reader never has to scan a tar at start-up.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

from .format import split_member_name

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class IndexedComponent:
    ext: str
    offset: int
    size: int
    name: str


def format_index(samples: list[list[IndexedComponent]]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for comps in samples:
        lines.append(" ".join(f"{c.ext} {c.offset} {c.size} {c.name}" for c in comps))
    return "\n".join(lines) + "\n"


def parse_index(text: str, where: str = "index") -> list[list[IndexedComponent]]:
    """Parse an index file; raises ``ValueError`` naming ``where`` and the line on any defect."""
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{where}: empty index file")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ValueError(f"{where}: line 1: expected '{INDEX_VERSION} <count>', got {lines[0]!r}")
    count = int(head[1])
    body = lines[1:]
    if len(body) != count:
        raise ValueError(f"{where}: header says {count} samples, file lists {len(body)}")
    samples = []
    for lineno, line in enumerate(body, start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ValueError(f"{where}: line {lineno}: expected groups of 'ext offset size name'")
        comps = []
        for i in range(0, len(fields), 4):
            ext, off, size, name = fields[i:i + 4]
            if not (off.isdigit() and size.isdigit()):
                raise ValueError(f"{where}: line {lineno}: offset/size not integers: {off!r} {size!r}")
            comps.append(IndexedComponent(ext, int(off), int(size), name))
        samples.append(comps)
    return samples


def index_tar(path) -> list[list[IndexedComponent]]:
    """Build the index of a tar by reading its headers (what ``wds2idx`` does); used by verify."""
    samples: list[list[IndexedComponent]] = []
    last_key = None
    with tarfile.open(path, "r:") as tf:
        for member in tf:
            if not member.isreg():
                continue
            key, ext = split_member_name(member.name)
            if not key or key.endswith("/"):
                continue
            comp = IndexedComponent(ext, member.offset_data, member.size, member.name)
            if key != last_key:
                samples.append([comp])
                last_key = key
            else:
                samples[-1].append(comp)
    return samples

"""DALI webdataset index files (the format DALI's ``wds2idx`` writes, version v1.2): the one
reader and writer of ``.idx`` files, used by ``clvr shard``, ``clvr shard index``, ``verify`` and
the pipeline.

Line 1: ``v1.2 <number of samples>``. Then one line per sample, listing for each of its
components ``<ext> <data offset> <size> <member name>``. Offsets point at the member's data
(its 512-byte tar header lies just before), so they are multiples of 512.

DALI reads only the extension, offset and size of a component; the name is carried into each
sample's ``source_info`` and nothing else. The fields are space-separated, so a member name with
white space cannot stand there as it is: :func:`field_name` writes such a name percent-encoded
(``photo 1.jpg`` -> ``photo%201.jpg``), and ``clvr shard index`` keeps the true names in its own
side file. Every other name is written as ``wds2idx`` writes it.

clvr writes these while sharding, so DALI's reader never has to scan a tar at start-up.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from urllib.parse import quote

from .errors import ShardError
from .format import split_member_name

INDEX_VERSION = "v1.2"


class IndexFileError(ShardError, ValueError):
    """An index file that cannot be parsed, or that does not describe its tar."""


@dataclass(frozen=True)
class IndexedComponent:
    ext: str
    offset: int
    size: int
    name: str


def field_name(name: str) -> str:
    """``name`` as it can stand in an index line: unchanged unless it holds white space, which
    (with ``%``) is then percent-encoded."""
    if not any(c.isspace() for c in name):
        return name
    return "".join(quote(c, safe="") if c.isspace() or c == "%" else c for c in name)


def format_index(samples: list[list[IndexedComponent]]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for comps in samples:
        lines.append(" ".join(f"{c.ext} {c.offset} {c.size} {field_name(c.name)}" for c in comps))
    return "\n".join(lines) + "\n"


def parse_index(text: str, where: str = "index") -> list[list[IndexedComponent]]:
    """Parse an index file; raises :class:`IndexFileError` naming ``where`` and the line."""
    lines = text.splitlines()
    if not lines:
        raise IndexFileError(f"{where}: empty index file")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise IndexFileError(f"{where}: line 1: not a DALI {INDEX_VERSION} index file "
                             f"(expected '{INDEX_VERSION} <count>', got {lines[0][:60]!r})")
    count = int(head[1])
    body = [ln for ln in lines[1:] if ln.strip()]
    if len(body) != count:
        raise IndexFileError(f"{where}: header says {count} samples but {len(body)} are listed")
    samples = []
    for lineno, line in enumerate(body, start=2):
        fields = line.split()
        if len(fields) % 4:
            raise IndexFileError(f"{where}: line {lineno}: expected groups of 'ext offset size name' "
                                 "(a member name with a space? re-run clvr shard index, which encodes it)")
        comps = []
        for i in range(0, len(fields), 4):
            ext, off, size, name = fields[i:i + 4]
            if not (off.isdigit() and size.isdigit()):
                raise IndexFileError(f"{where}: line {lineno}: offset/size not integers: {off!r} {size!r}")
            comps.append(IndexedComponent(ext, int(off), int(size), name))
        samples.append(comps)
    return samples


def read_index(path) -> list[list[IndexedComponent]]:
    """Parse the index file at ``path`` (errors name it)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise IndexFileError(f"{path}: cannot read the index file ({e})") from None
    return parse_index(text, str(path))


def index_summary(path) -> tuple[int, set[str]]:
    """(sample count, components of the first sample) from an index file's first two lines; the
    full check of every line (:func:`read_index`) is the loader's, once, at start-up."""
    try:
        with open(path, encoding="utf-8") as f:
            header, line = f.readline().split(), f.readline().split()
    except (OSError, UnicodeDecodeError) as e:
        raise IndexFileError(f"{path}: cannot read the index file ({e})") from None
    if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
        raise IndexFileError(f"{path}: not a DALI {INDEX_VERSION} index file (first line {' '.join(header)!r})")
    return int(header[1]), set(line[0::4])


def sample_key(comps: list[IndexedComponent]) -> str:
    """A sample's key from the index's member names: webdataset's rule, the path up to the first
    dot of the file name (``clvr shard index`` keeps the true keys in its side file)."""
    return split_member_name(comps[0].name)[0] if comps else ""


def _header_names(name: str) -> set[str]:
    """The names a tar header may hold for member ``name``: the name itself, or, where the
    writer put the real name in a PAX or GNU long-name record, the ustar field's stand-in
    (truncated to 100 bytes, non-ASCII replaced by ``?`` as Python's tarfile writes it)."""
    ascii_ = name.encode("ascii", "replace").decode("ascii")
    return {name, ascii_[:100], name.encode("utf-8")[:100].decode("utf-8", "ignore")}


def member_name(comp: IndexedComponent, key: str | None = None) -> str:
    """The member's true name: ``KEY.EXT`` when the sample's true key (``clvr shard index``'s
    side file) gives the index's (encoded) name, else the index's name."""
    if key is not None and field_name(f"{key}.{comp.ext}") == comp.name:
        return f"{key}.{comp.ext}"
    return comp.name


def check_keys(samples: list[list[IndexedComponent]], keys: list[str], where: str, side: str) -> None:
    """The side file's keys must be those of the index, sample for sample."""
    if len(keys) != len(samples):
        raise IndexFileError(f"{side}: lists {len(keys)} samples, {where} {len(samples)}; re-run clvr shard index")
    for n, (comps, key) in enumerate(zip(samples, keys)):
        if comps and member_name(comps[0], key) != f"{key}.{comps[0].ext}":
            raise IndexFileError(f"{side}: does not match {where}: sample {n + 1} is key {key!r} there, "
                                 f"{comps[0].name!r} in the index; re-run clvr shard index")


def check_against_tar(samples: list[list[IndexedComponent]], tar_path, where: str = "index",
                      keys: list[str] | None = None) -> None:
    """Check that an index describes ``tar_path``: no component runs past the tar's end (a
    truncated shard is named with the first key cut off), and the tar headers just before the
    first and last samples' data carry those members (else the index was made for another tar).
    ``keys``: the true key of each sample (the side file of ``clvr shard index``, checked
    against the index with :func:`check_keys`)."""
    size = os.path.getsize(tar_path)
    if keys is not None and len(keys) != len(samples):
        keys = None             # another index's side file: check_keys says so; the tar is checked alone

    def name_and_key(n: int, comp: IndexedComponent) -> tuple[str, str]:
        key = keys[n] if keys else None
        name = member_name(comp, key)
        if key is None or name != f"{key}.{comp.ext}":       # no side file, or one of another index
            key = split_member_name(name)[0]
        return name, key

    for n, comps in enumerate(samples):
        for c in comps:
            if c.offset + c.size > size:
                name, key = name_and_key(n, c)
                raise IndexFileError(f"{tar_path}: truncated: key {key} ({name}) ends at byte "
                                     f"{c.offset + c.size} but the shard has {size} bytes")
    if not samples:
        return
    with open(tar_path, "rb") as f:
        for n in sorted({0, len(samples) - 1}):
            comp = samples[n][0]
            name, key = name_and_key(n, comp)
            found = None
            if comp.offset >= 512:
                f.seek(comp.offset - 512)
                try:
                    header = tarfile.TarInfo.frombuf(f.read(512), "utf-8", "surrogateescape")
                    found = header.name if header.size == comp.size else None
                except tarfile.TarError:
                    found = None
            if found is None or not (found in _header_names(name)
                                     or name.startswith(found) or name.endswith(found)):
                raise IndexFileError(f"{where}: does not match {tar_path}: the index puts key {key} "
                                     f"({name}, {comp.size} bytes) at byte {comp.offset}, but the tar has "
                                     f"{found or 'no matching member header'} there "
                                     "(re-run clvr shard index, or re-shard)")


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

"""``manifest.json``: what a shard set holds, and the proof that it was written completely.

A *shard set* is a directory with ``manifest.json`` listing its shards (sample counts, bytes,
sha256), totals, classes, components and the exact command and seed. An output with a
train/val split has a root ``manifest.json`` whose ``splits`` name the set in each
sub-directory. The manifest is written last, atomically: a directory without one is incomplete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ShardError
from .format import FORMAT_NAME, FORMAT_VERSION, json_bytes

MANIFEST_NAME = "manifest.json"


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(json_bytes(obj, indent=2) + b"\n")
    os.replace(tmp, path)


def read_manifest(path) -> dict:
    """Read ``path`` (a shard-set directory or its manifest.json) and check the format header."""
    path = Path(path)
    file = path / MANIFEST_NAME if path.is_dir() else path
    if not file.exists():
        raise ShardError(f"{file}: no manifest; {file.parent} is not a complete clvr shard set "
                         "(an interrupted 'clvr shard' run leaves none: re-run it to finish)")
    try:
        manifest = json.loads(file.read_text())
    except ValueError as e:
        raise ShardError(f"{file}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{file}: not a clvr manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ShardError(f"{file}: format version {manifest['format_version']} is newer than this "
                         f"clvr understands ({FORMAT_VERSION}); upgrade clvr")
    return manifest


def shard_sets(path) -> dict[str | None, tuple[Path, dict]]:
    """Map split name -> (directory, manifest) for a shard set or a root with splits."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    manifest = read_manifest(path)
    if "splits" in manifest:
        return {name: (root / info["path"], read_manifest(root / info["path"]))
                for name, info in manifest["splits"].items()}
    return {manifest.get("split"): (root, manifest)}


def shard_paths(path) -> tuple[list[Path], list[Path]]:
    """The tar and index files of one shard set, in order (what a reader is given)."""
    sets = shard_sets(path)
    if len(sets) != 1:
        raise ShardError(f"{path}: holds several splits ({', '.join(map(str, sets))}); "
                         "name one of its sub-directories")
    directory, manifest = next(iter(sets.values()))
    tars = [directory / s["name"] for s in manifest["shards"]]
    idxs = [directory / s["index"] for s in manifest["shards"]]
    return tars, idxs

"""``manifest.json``: what a shard set holds, and the proof that it was written completely.

A *shard set* is a directory with ``manifest.json`` listing its shards (sample counts, bytes,
sha256), totals, classes, components and the exact command and seed. An output with a
train/val split has a root ``manifest.json`` whose ``splits`` name the set in each
sub-directory. The manifest is written last, atomically: a directory without one is incomplete.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ShardError
from .fileio import write_atomic
from .format import FORMAT_NAME, FORMAT_VERSION, json_bytes

MANIFEST_NAME = "manifest.json"


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json_bytes(obj, indent=2) + b"\n")


def read_manifest(path) -> dict:
    """Read ``path`` (a shard-set directory or its manifest.json) and check the format header."""
    path = Path(path)
    file = path / MANIFEST_NAME if path.is_dir() else path
    if not file.exists():
        raise ShardError(f"{file}: no manifest; {file.parent} is not a complete clvr shard set "
                         "(an interrupted 'clvr shard' run leaves none: re-run it to finish)")
    try:
        manifest = json.loads(file.read_text())
    except (ValueError, RecursionError) as e:
        raise ShardError(f"{file}: not valid JSON ({e})") from None
    except OSError as e:
        raise ShardError(f"{file}: cannot be read ({e.strerror})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ShardError(f"{file}: not a clvr manifest (format={got!r})")
    if not isinstance(manifest.get("format_version"), int) or isinstance(manifest["format_version"], bool):
        raise ShardError(f"{file}: format_version must be an integer, got {manifest.get('format_version')!r}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ShardError(f"{file}: format version {manifest['format_version']} is newer than this "
                         f"clvr understands ({FORMAT_VERSION}); upgrade clvr")
    return manifest


def shard_sets(path) -> dict[str | None, tuple[Path, dict]]:
    """Map split name -> (directory, manifest) for a shard set or a root with splits."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    manifest = read_manifest(path)
    if "splits" in manifest:
        if not isinstance(manifest["splits"], dict) or not manifest["splits"]:
            raise ShardError(f"{root / MANIFEST_NAME}: 'splits' must name at least one split folder")
        sets = {}
        for name, info in manifest["splits"].items():
            sub = info.get("path") if isinstance(info, dict) else None
            if not plain_name(sub):
                raise ShardError(f"{root / MANIFEST_NAME}: split {name!r} has path {sub!r}; it must be a "
                                 "sub-folder of the shard set")
            sets[name] = (root / sub, read_manifest(root / sub))
        return sets
    return {manifest.get("split"): (root, manifest)}


def plain_name(name) -> bool:
    """A file or folder name inside the shard set: no separator, not '.' or '..'."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def structure_problems(manifest: dict, where: str) -> list[str]:
    """What is malformed in a shard set's manifest (types, names, totals), as messages."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return [f"{where}: 'shards' must be a list"]
    problems = []
    ints = ("samples", "bytes", "first_index")
    for k, s in enumerate(shards):
        if not isinstance(s, dict):
            problems.append(f"{where}: shards[{k}] is not an object")
            continue
        for key in ("name", "index"):
            if not plain_name(s.get(key)):
                problems.append(f"{where}: shards[{k}].{key} = {s.get(key)!r} is not a file name in the set")
        for key in ints:
            if not isinstance(s.get(key), int) or isinstance(s.get(key), bool) or s[key] < 0:
                problems.append(f"{where}: shards[{k}].{key} = {s.get(key)!r} is not a count")
        sha = s.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            problems.append(f"{where}: shards[{k}].sha256 = {sha!r} is not a sha256 digest")
    classes = manifest.get("classes")
    if classes is not None and not (isinstance(classes, dict) and isinstance(classes.get("names"), list)):
        problems.append(f"{where}: 'classes' must be null or {{names: [...], ids: {{...}}}}")
    if problems:
        return problems
    totals = manifest.get("totals")
    expected = {"samples": sum(s["samples"] for s in shards), "shards": len(shards),
                "bytes": sum(s["bytes"] for s in shards)}
    if not isinstance(totals, dict):
        return [f"{where}: 'totals' must be an object"]
    for key, value in expected.items():
        if totals.get(key) != value:
            problems.append(f"{where}: totals.{key} = {totals.get(key)!r} but the shards add up to {value}")
    return problems


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

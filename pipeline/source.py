"""Where the samples come from: resolve a shard-set spec into the files (or URLs) a reader is given.

A spec is one of:

- a shard-set directory with ``manifest.json`` (``data/digits/train``), or the manifest itself;
- a brace pattern of local tars, ``data/train-{000000..000099}.tar``;
- a list of local tar paths;
- remote URLs (``http://``, ``https://``, ``s3://``, ``gs://``, ``pipe:``, ``file:``), alone, as
  a brace pattern or a list, or the URL of a shard set's ``manifest.json``. Those stream through
  the ``webdataset`` library (see :mod:`.remote`); their sample counts come from the set's
  manifest: ``manifest=`` (a local path or URL), else ``manifest.json`` beside the shards.

Every local tar must have its DALI index file (``NAME.idx``) beside it: ``clvr shard`` writes one.
The index files are parsed up front (:func:`read_index`), which is how a missing component or a
truncated shard is named before the first batch rather than deep inside DALI.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from clvr.shards import dali_index
from clvr.shards.errors import ShardError
from clvr.shards.foreign import read_samples_file
from clvr.shards.manifest import MANIFEST_NAME, read_manifest, shard_sets, structure_problems

from .errors import PipelineError

REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "pipe:", "file:")


def is_remote(spec) -> bool:
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    return any(str(s).startswith(REMOTE_PREFIXES) for s in specs)


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a..b}`` numeric ranges (zero-padded as written) and ``{x,y}`` alternatives."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, body, tail = pattern[:match.start()], match.group(1), pattern[match.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") else 0
        if int(hi) < int(lo):
            raise PipelineError(f"{pattern}: empty range {{{body}}}")
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(head + item + tail)]


@dataclass
class IndexedSample:
    """One sample of a shard as its index file lists it."""
    key: str
    components: dict[str, tuple[int, int]]  # ext (as written) -> (offset, size)
    label: int | None = None                # clvr shard index's side file: the class id (-1: none)

    @property
    def offsets(self) -> set[int]:
        return {off for off, _ in self.components.values()}


@dataclass
class Shard:
    tar: str
    index: str | None
    samples: int | None = None
    first_index: int | None = None
    samples_file: str | None = None         # clvr shard index: true keys and labels


@dataclass
class ShardSet:
    """The shards one loader reads, plus what the manifest says about them (if there is one)."""
    spec: str
    shards: list[Shard]
    remote: bool = False
    manifest: dict | None = None
    classes: list[str] | None = None
    categories: list | None = None
    components: set[str] = field(default_factory=set)
    num_samples: int | None = None
    kind: str | None = None

    @property
    def tars(self) -> list[str]:
        return [s.tar for s in self.shards]

    @property
    def index_files(self) -> list[str]:
        return [s.index for s in self.shards]


def resolve(spec, split: str | None = None, manifest=None) -> ShardSet:
    """Turn a spec (see the module doc) into a :class:`ShardSet`. Errors name the path at fault.

    ``manifest`` (a local path or URL of ``manifest.json``) is for URL specs only: it gives the
    per-shard sample counts when no manifest sits beside the shards.
    """
    if manifest is not None and not is_remote(spec if isinstance(spec, (list, tuple)) else str(spec)):
        raise PipelineError(f"{spec}: manifest= is for URL specs; local shards use the manifest.json "
                            "of their folder")
    if isinstance(spec, (str, os.PathLike)) and not isinstance(spec, (list, tuple)):
        spec = str(spec)
        if is_remote(spec):
            return _remote(spec, expand_braces(spec), manifest, split)
        path = Path(spec)
        if path.is_dir() or path.name == MANIFEST_NAME:
            return _from_manifest(path, split)
        if "{" in spec:
            return _from_tars(spec, expand_braces(spec))
        if path.suffix == ".tar":
            return _from_tars(spec, [spec])
        if not path.exists():
            raise PipelineError(f"{spec}: no such shard set (give a directory with manifest.json, "
                                "a brace pattern like train-{000000..000009}.tar, or a list of tars)")
        raise PipelineError(f"{spec}: not a shard set (expected a directory with {MANIFEST_NAME} or .tar files)")
    specs = [str(s) for s in spec]
    if not specs:
        raise PipelineError("empty list of shards")
    urls = [u for s in specs for u in expand_braces(s)]
    if is_remote(specs):
        return _remote(",".join(specs), urls, manifest, split)
    return _from_tars(",".join(specs), urls)


def _from_manifest(path: Path, split: str | None) -> ShardSet:
    try:
        sets = shard_sets(path)
    except ShardError as e:
        raise PipelineError(str(e)) from None
    if split is not None:
        if split not in sets:
            raise PipelineError(f"{path}: has no split {split!r} (it has: {', '.join(map(str, sets))})")
        directory, manifest = sets[split]
    elif len(sets) == 1:
        directory, manifest = next(iter(sets.values()))
    else:
        names = ", ".join(str(path / n) for n in sets)
        raise PipelineError(f"{path}: holds several splits; name one of them: {names}")
    problems = structure_problems(manifest, str(directory / MANIFEST_NAME))
    if problems:
        raise PipelineError("; ".join(problems))
    tar_dir = manifest.get("tar_dir", ".")
    if not isinstance(tar_dir, str) or not tar_dir:
        raise PipelineError(f"{directory / MANIFEST_NAME}: tar_dir = {tar_dir!r} must name the tars' folder")
    tars = directory / tar_dir       # clvr shard index --out DIR: the tars stay where they are
    shards = [Shard(str(tars / s["name"]), str(directory / s["index"]), s["samples"], s["first_index"],
                    str(directory / s["samples_file"]) if s.get("samples_file") else None)
              for s in manifest["shards"]]
    for s, entry in zip(shards, manifest["shards"]):
        if not Path(s.tar).is_file():
            raise PipelineError(f"{s.tar}: no such shard (listed in {directory / MANIFEST_NAME})")
        # (a shorter tar is named with the first key cut off by read_index: "truncated")
        if os.path.getsize(s.tar) > entry["bytes"]:
            raise PipelineError(f"{s.tar}: {os.path.getsize(s.tar):,} bytes, but {directory / MANIFEST_NAME} "
                                f"lists {entry['bytes']:,}: the tar changed after it was indexed, so its index "
                                f"file {s.index} does not match it (re-run clvr shard index, or re-shard)")
    if not shards:
        raise PipelineError(f"{directory / MANIFEST_NAME}: the shard set has no shards (0 samples)")
    return ShardSet(spec=str(path), shards=shards, components=set(manifest.get("components") or {}),
                    num_samples=manifest["totals"]["samples"], **_described_by(manifest))


def _described_by(manifest: dict | None) -> dict:
    """The ShardSet fields a manifest gives beyond the shard list: classes, categories, kind."""
    manifest = manifest or {}
    classes = manifest.get("classes") or None
    categories = manifest.get("categories") or None
    return {"manifest": manifest or None,
            "classes": list(classes["names"]) if classes else None,
            "categories": categories["names"] if isinstance(categories, dict) else categories,
            "kind": manifest.get("kind")}


def _from_tars(spec: str, tars: list[str]) -> ShardSet:
    shards = []
    for tar in tars:
        if not Path(tar).is_file():
            raise PipelineError(f"{tar}: no such shard (from {spec})")
        idx = str(Path(tar).with_suffix(".idx"))
        if not Path(idx).is_file():
            raise PipelineError(f"{tar}: no DALI index file {idx} beside it; 'clvr shard' writes one, "
                                "and DALI's tools/wds2idx.py makes one for a foreign tar")
        shards.append(Shard(tar, idx))
    # Use the manifest of the folder when the tars are (a subset of) a clvr shard set's shards.
    found = _manifest_for(tars)
    components: set[str] = set()
    for s in shards:
        s.samples, first = index_summary(s.index)
        known = found.get(os.path.abspath(s.tar)) if found else None
        s.first_index = known["first_index"] if known else None
        if known and known.get("samples_file"):
            s.samples_file = str(Path(s.tar).parent / known["samples_file"])
        components |= first
    manifest = next(iter(found.values()))["_manifest"] if found else None
    return ShardSet(spec=spec, shards=shards, components=components,
                    num_samples=sum(s.samples for s in shards), **_described_by(manifest))


def _manifest_for(tars: list[str]) -> dict:
    """Manifest entries (by absolute tar path) when every tar belongs to the same clvr shard set."""
    dirs = {os.path.dirname(os.path.abspath(t)) for t in tars}
    if len(dirs) != 1:
        return {}
    directory = Path(dirs.pop())
    try:
        manifest = read_manifest(directory)
    except ShardError:
        return {}
    if "shards" not in manifest:
        return {}
    entries = {str(directory / s["name"]): dict(s, _manifest=manifest) for s in manifest["shards"]
               if isinstance(s, dict) and isinstance(s.get("name"), str)}
    if not all(os.path.abspath(t) in entries for t in tars):
        return {}
    return entries


def _remote(spec: str, urls: list[str], manifest, split: str | None) -> ShardSet:
    local = [u for u in urls if not is_remote(u)]
    if local:
        raise PipelineError(f"{spec}: mixes URLs and local paths ({local[0]}); use file: URLs for "
                            "local tars read as streams")
    from . import remote
    return remote.resolve(spec, urls, manifest, split)


def index_summary(index_path: str) -> tuple[int, set[str]]:
    """(sample count, components of the first sample) from an index file's first two lines.

    The full check of every line (:func:`read_index`) is the loader's, once, at start-up.
    """
    try:
        return dali_index.index_summary(index_path)
    except ShardError as e:
        raise PipelineError(str(e)) from None


def read_index(index_path: str, tar_path: str | None = None, samples_file: str | None = None) -> list[IndexedSample]:
    """Parse a DALI (wds2idx v1.2) index file (:mod:`clvr.shards.dali_index`, the one parser);
    check it against the tar when given: a component whose bytes run past the end of the tar
    means the shard was truncated after it was written (named with the first key cut off), and
    the tar's headers must carry the members the index names.

    ``samples_file``: the side file of ``clvr shard index``, whose true keys (and labels) the
    samples then carry."""
    try:
        entries = dali_index.read_index(index_path)
        side = read_samples_file(samples_file) if samples_file else None
        keys = side["keys"] if side else None
        if tar_path:
            dali_index.check_against_tar(entries, tar_path, index_path, keys=keys)
        if keys is not None:
            dali_index.check_keys(entries, keys, index_path, samples_file)
    except ShardError as e:
        raise PipelineError(str(e)) from None
    labels = side.get("labels") if side else None
    return [IndexedSample(keys[n] if keys else dali_index.sample_key(comps),
                          {c.ext: (c.offset, c.size) for c in comps},
                          labels[n] if labels is not None else None)
            for n, comps in enumerate(entries)]

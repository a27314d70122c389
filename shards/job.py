"""The sharding run shared by every ``clvr shard`` input kind.

A kind lists its inputs as :class:`Item` s and gives a picklable ``prepare(item)`` that turns
one into its components (or raises :class:`Reject`). This module does the rest, in order:

1. take the output lock (one writer per OUT);
2. refuse a complete OUT unless ``--overwrite``; resume an interrupted run of the same job;
3. prepare items in a bounded process pool, in input order (``--workers``);
4. give accepted samples their global index 0..N-1, write them into shards with DALI indexes;
5. log rejects and conversions to ``rejects.jsonl``; ``--strict`` stops at the first reject;
6. write the manifests last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import Reject, ShardError, StrictReject
from .fileio import read_bytes
from .format import (CLS_EXT, IMAGE_EXTS, FORMAT_NAME, FORMAT_VERSION, INDEX_EXT, LABEL_EXT, META_EXT, UNLABELLED,
                     encode_int64, encode_json, ordered_components, sample_key)
from .lock import OutputLock
from .manifest import MANIFEST_NAME, plain_name, write_json_atomic
from .parallel import WorkerDied, ordered_map
from .progress import Progress
from .rejects import REJECTS_NAME, RejectLog
from .shard_writer import TMP_SUFFIX, ShardWriter
from .sizes import bucket as size_bucket

JOURNAL_NAME = ".clvr-progress.json"


@dataclass(frozen=True)
class Item:
    """One input sample before preparation. ``src`` names it in every message.

    A ``prepare`` that reads files may define ``input_path(item)``: a resumed run then checks
    that the files the interrupted run consumed are unchanged (size and modification time)."""

    src: str
    label: int = UNLABELLED
    extra: dict | None = None


@dataclass
class Prepared:
    """What ``prepare`` returns: the sample's payload components and metadata.

    ``notes`` are ``(what, action, reason)`` for ``rejects.jsonl``: a conversion of the sample,
    or a rejected or clipped box, that did not stop the sample from being written.
    """

    components: dict[str, bytes]
    meta: dict = field(default_factory=dict)
    notes: list[tuple[str, str, str]] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)  # counted into the manifest, e.g. "codec:vp9"


@dataclass(frozen=True)
class SourceFile:
    """A component that is an input file's bytes unchanged: the writer reads the file itself,
    so large payloads do not travel back from the worker processes through a pipe."""

    path: str

    def read(self) -> bytes:
        return read_bytes(self.path)


@dataclass
class Rejected:
    reason: str


@dataclass
class Split:
    name: str | None  # "train" / "val", or None for a single shard set written into OUT itself
    items: list[Item]


@dataclass
class JobConfig:
    kind: str
    out: Path
    command: list[str]
    options: dict
    shard_size: int = 1000
    max_shard_bytes: int | None = None
    workers: int = 1
    strict: bool = False
    overwrite: bool = False
    seed: int | None = None
    classes: list[str] | None = None
    categories: list[dict] | None = None
    progress: bool = True
    resume: bool = True
    fsync: bool = False
    # Listing-level log entries (src, what, action, reason), e.g. a bad line of a CSV list.
    listing_notes: list[tuple[str, str, str, str]] = field(default_factory=list)
    # the recommended view recipe written into every manifest (.recommended), or None
    recommended: dict | None = None


@dataclass
class SplitResult:
    name: str | None
    directory: Path
    samples: int
    shards: int
    bytes: int
    manifest: dict


@dataclass
class JobResult:
    splits: list[SplitResult]
    rejected: int
    converted: int
    rejected_boxes: int
    converted_boxes: int
    seconds: float
    resumed: bool
    rejects_path: Path

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.splits)


class _SafePrepare:
    """Runs ``prepare`` in a worker and returns ``(input token, result)``; any failure becomes a
    :class:`Rejected` naming its cause. The token (see :func:`_input_token`) is taken here too,
    off the writing process."""

    def __init__(self, prepare: Callable[[Item], Prepared]):
        self.prepare = prepare
        self.path_of = getattr(prepare, "input_path", None)

    def __call__(self, item: Item):
        token = _input_token(self.path_of(item) if self.path_of else None)
        try:
            return token, self.prepare(item)
        except Reject as e:
            return token, Rejected(e.reason)
        except MemoryError:
            return token, Rejected("out of memory while decoding")
        except Exception as e:  # a defect of the input that no check above anticipated
            return token, Rejected(f"unexpected {type(e).__name__}: {e}")


def fingerprint(cfg: JobConfig, splits: list[Split]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"kind": cfg.kind, "options": cfg.options, "shard_size": cfg.shard_size,
                         "max_shard_bytes": cfg.max_shard_bytes, "seed": cfg.seed, "classes": cfg.classes,
                         "categories": cfg.categories, "listing_notes": cfg.listing_notes,
                         "version": FORMAT_VERSION}, sort_keys=True, default=str).encode("utf-8", "surrogateescape"))
    for s in splits:
        h.update(f"\0split {s.name}\0".encode())
        for it in s.items:
            h.update(f"{it.src}\0{it.label}\0".encode("utf-8", "surrogateescape"))
            if it.extra is not None:
                h.update(json.dumps(it.extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _split_dir(out: Path, name: str | None) -> Path:
    return out / name if name else out


def _shard_files(directory: Path, prefix: str, tmp: bool | None = None) -> list[Path]:
    """Files named as clvr names shards in ``directory`` (``PREFIX-NNNNNN.tar|.idx``, and their
    ``.tmp``), and nothing else: a user's own files in OUT are never touched."""
    pattern = re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.(tar|idx)({re.escape(TMP_SUFFIX)})?$")
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and (m := pattern.match(p.name))
                  and (tmp is None or bool(m.group(2)) == tmp))


def _clean(out: Path, split_names: list[str | None]) -> None:
    """Remove what a clvr run writes -- shards, indices, manifests, rejects, journal -- from OUT
    and its split folders."""
    for name in split_names:
        d = _split_dir(out, name)
        for p in _shard_files(d, name or "shard"):
            p.unlink()
        (d / MANIFEST_NAME).unlink(missing_ok=True)
    for name in (MANIFEST_NAME, REJECTS_NAME, JOURNAL_NAME):
        (out / name).unlink(missing_ok=True)


def _input_token(path: str | None) -> bytes:
    """What identifies an input file's content cheaply: its size and modification time."""
    if path is None:
        return b"-\0"
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return b"missing\0"
    return f"{st.st_size}:{st.st_mtime_ns}\0".encode()


def _inputs_digest(items: list[Item], path_of) -> "hashlib._Hash":
    h = hashlib.sha256()
    for it in items:
        h.update(_input_token(path_of(it) if path_of else None))
    return h


def run_job(cfg: JobConfig, splits: list[Split], prepare: Callable[[Item], Prepared],
            log=print) -> JobResult:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for s in splits:
        if s.name:
            (out / s.name).mkdir(exist_ok=True)
    with OutputLock(out):
        return _run_locked(cfg, splits, prepare, out, log)


def _run_locked(cfg, splits, prepare, out: Path, log) -> JobResult:
    t0 = time.perf_counter()
    names = [s.name for s in splits]
    if (out / MANIFEST_NAME).exists():
        if not cfg.overwrite:
            raise ShardError(f"{out}: already holds a complete shard set ({MANIFEST_NAME}); "
                             "pass --overwrite to replace it, or choose another OUT")
        _clean(out, names + _old_split_names(out / MANIFEST_NAME))

    fp = fingerprint(cfg, splits)
    path_of = getattr(prepare, "input_path", None)
    journal_path = out / JOURNAL_NAME
    journal = _load_journal(journal_path)
    inputs = None
    if journal is not None:
        inputs = _resumable(cfg, splits, out, journal, fp, path_of, log)
        if inputs is None:  # the interrupted run's files are clvr's own: clear them
            _clean(out, names + [k for k in journal["splits"] if plain_name(k)])
            journal = None
    if journal is None:
        leftovers = [p for n in names for p in _shard_files(_split_dir(out, n), n or "shard", tmp=False)]
        if leftovers and not cfg.overwrite:
            raise ShardError(f"{out}: holds shard files ({', '.join(p.name for p in leftovers[:3])}"
                             f"{', ...' if len(leftovers) > 3 else ''}) that no manifest or interrupted run "
                             "accounts for; pass --overwrite to replace them, or choose another OUT")
        _clean(out, names)
        journal = {"fingerprint": fp, "rejects_bytes": 0, "splits": {}}
        inputs = {}
        resumed = False
    else:
        resumed = True
        done = sum(len(v["shards"]) for v in journal["splits"].values())
        log(f"resuming the interrupted run in {out}: {done} shard(s) already complete")
    for n in names:
        for p in _shard_files(_split_dir(out, n), n or "shard", tmp=True):
            p.unlink()

    rejects = RejectLog(out, truncate_to=journal["rejects_bytes"] if resumed else None)
    if not resumed:
        for src, what, action, reason in cfg.listing_notes:
            rejects.add(src, reason, action=action, what=what)
            if cfg.strict and action == "rejected":
                rejects.close()
                raise StrictReject(f"{src}: {reason} (--strict stops at the first reject)")
        journal["rejects_bytes"] = rejects.position()
    try:
        results = [_run_split(cfg, split, prepare, out, journal, journal_path, rejects,
                              inputs.get(split.name or "") or hashlib.sha256(), path_of) for split in splits]
    finally:
        rejects.close()

    result = JobResult(
        splits=results,
        rejected=rejects.count("rejected", "sample") + rejects.count("rejected", "line"),
        converted=rejects.count("converted", "sample"),
        rejected_boxes=rejects.count("rejected", "box"),
        converted_boxes=rejects.count("converted", "box"),
        seconds=time.perf_counter() - t0, resumed=resumed, rejects_path=rejects.path)
    _write_manifests(cfg, out, result)
    journal_path.unlink(missing_ok=True)
    return result


def _old_split_names(manifest_path: Path) -> list[str]:
    """The split folders an earlier complete set named, when they are folders inside OUT."""
    try:
        splits = json.loads(manifest_path.read_text()).get("splits")
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in splits if plain_name(name)] if isinstance(splits, dict) else []


def _load_journal(path: Path) -> dict | None:
    try:
        journal = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return journal if isinstance(journal, dict) and isinstance(journal.get("splits"), dict) else None


def _resumable(cfg, splits, out: Path, journal: dict, fp: str, path_of, log) -> dict | None:
    """The running input digests per split when the interrupted run can go on; None otherwise."""
    if journal.get("fingerprint") != fp or not cfg.resume or cfg.overwrite:
        log(f"note: {out} holds an interrupted run of a different job (or --no-resume); starting over")
        return None
    if not _journal_files_ok(out, journal):
        log(f"note: {out}: files of the interrupted run are missing or changed; starting over")
        return None
    inputs = {}
    for s in splits:  # the inputs it consumed must be unchanged (size and mtime of each file)
        state = journal["splits"].get(s.name or "")
        if state is not None:
            digest = _inputs_digest(s.items[:state["consumed"]], path_of)
            if digest.hexdigest() != state.get("inputs"):
                log(f"note: {out}: input files changed since the interrupted run; starting over")
                return None
            inputs[s.name or ""] = digest
    return inputs


def _journal_files_ok(out: Path, journal: dict) -> bool:
    if not (out / REJECTS_NAME).exists() or (out / REJECTS_NAME).stat().st_size < journal["rejects_bytes"]:
        return False
    for name, state in journal["splits"].items():
        d = _split_dir(out, name)
        for rec in state["shards"]:
            p = d / rec["name"]
            if not p.exists() or p.stat().st_size != rec["bytes"] or not (d / rec["index"]).exists():
                return False
    return True


def _run_split(cfg: JobConfig, split: Split, prepare, out: Path, journal: dict, journal_path: Path,
               rejects: RejectLog, inputs, path_of) -> SplitResult:
    """Write one split. ``inputs`` is the running digest of the inputs consumed so far (size and
    mtime of each file), kept in the journal so a resume can tell that they did not change."""
    key = split.name or ""  # JSON keys are strings: "" for the unsplit set
    directory = _split_dir(out, split.name)
    state = journal["splits"].setdefault(key, {"shards": [], "consumed": 0, "next_index": 0,
                                               "components": {}, "labels": {}, "stats": {}})
    consumed = state["consumed"]
    next_index = state["next_index"]
    components = Counter(state["components"])
    labels = Counter(state["labels"])
    stats = Counter(state["stats"])
    # Counts up to the last finished shard; what comes after it is redone on resume.
    pending_components: Counter = Counter()
    pending_labels: Counter = Counter()
    pending_stats: Counter = Counter()

    def on_shard(record):
        nonlocal pending_components, pending_labels, pending_stats
        components.update(pending_components)
        labels.update(pending_labels)
        stats.update(pending_stats)
        pending_components, pending_labels, pending_stats = Counter(), Counter(), Counter()
        state["shards"].append(record.to_json())
        state["consumed"] = consumed
        state["next_index"] = next_index
        state["components"] = dict(components)
        state["labels"] = dict(labels)
        state["stats"] = dict(stats)
        state["inputs"] = inputs.hexdigest()
        journal["rejects_bytes"] = rejects.position()
        write_json_atomic(journal_path, journal)

    writer = ShardWriter(directory, prefix=split.name or "shard", max_samples=cfg.shard_size,
                         max_bytes=cfg.max_shard_bytes, start_shard=len(state["shards"]),
                         on_shard=on_shard, fsync=cfg.fsync)
    desc = f"shard {cfg.kind}" + (f" [{split.name}]" if split.name else "")
    progress = Progress(len(split.items), desc, enabled=cfg.progress, initial=consumed)
    safe = _SafePrepare(prepare)
    try:
        for item, (token, res) in zip(split.items[consumed:],
                             ordered_map(safe, split.items[consumed:], workers=cfg.workers,
                                         chunk_size=getattr(prepare, "chunk_size", 32))):
            if isinstance(res, Rejected):
                rejects.add(item.src, res.reason, split=split.name)
                inputs.update(token)
                consumed += 1
                progress.update(rejected=True)
                if cfg.strict:
                    raise StrictReject(f"{item.src}: {res.reason} (--strict stops at the first reject)")
                continue
            comps = {ext: d.read() if isinstance(d, SourceFile) else d for ext, d in res.components.items()}
            comps[INDEX_EXT] = encode_int64(next_index)
            comps[LABEL_EXT] = encode_int64(item.label)
            comps[CLS_EXT] = str(item.label).encode()
            meta = dict(res.meta)
            meta.update(index=next_index, src=item.src, label=item.label)
            if cfg.classes and item.label >= 0:
                meta["class_name"] = cfg.classes[item.label]
            comps[META_EXT] = encode_json(meta)
            ordered = ordered_components(comps)
            writer.write(next_index, sample_key(next_index), ordered)
            nbytes = sum(len(d) for _, d in ordered)
            for what, action, reason in _merge_sample_notes(res.notes):
                rejects.add(item.src, reason, action=action, what=what, split=split.name)
                if cfg.strict and action == "rejected":
                    raise StrictReject(f"{item.src}: {what} {reason} (--strict stops at the first reject)")
            pending_components.update(ext for ext, _ in ordered)
            pending_labels[str(item.label)] += 1
            pending_stats.update(res.stats)
            if "width" in meta and "height" in meta and any(ext in IMAGE_EXTS for ext, _ in ordered):
                pending_stats[size_bucket(meta["width"], meta["height"])] += 1
            inputs.update(token)
            next_index += 1
            consumed += 1
            progress.update(nbytes=nbytes)
        writer.close()
    except WorkerDied as e:
        writer.abandon()
        srcs = [it.src for it in e.chunk]
        raise ShardError(f"a worker process died while preparing {srcs[0]} .. {srcs[-1]} (a decoder crash?); "
                         "re-run with --workers 1 to find the input, which resumes where this run "
                         "stopped") from None
    except BaseException:
        writer.abandon()
        raise
    finally:
        progress.close()
    # A split with no accepted sample still gets a manifest, so the summary can say so; its
    # state is journalled with the next split's first shard.
    state["consumed"] = consumed
    state["inputs"] = inputs.hexdigest()
    records = state["shards"]
    manifest = _split_manifest(cfg, split.name, records, dict(components), dict(labels), dict(stats))
    return SplitResult(split.name, directory, next_index, len(records),
                       sum(r["bytes"] for r in records), manifest)


def _merge_sample_notes(notes):
    """One line per converted sample (its conversions joined by '; '), one per box note, so the
    counts of ``rejects.jsonl`` lines are counts of samples and boxes."""
    sample = [reason for what, action, reason in notes if what == "sample" and action == "converted"]
    rest = [n for n in notes if not (n[0] == "sample" and n[1] == "converted")]
    return ([("sample", "converted", "; ".join(sample))] if sample else []) + rest


def _split_manifest(cfg: JobConfig, name, records, components, labels, stats) -> dict:
    from clvr import __version__ as clvr_version  # the package root only holds the version

    total = sum(r["samples"] for r in records)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "clvr_version": clvr_version,
        "kind": cfg.kind,
        "split": name,
        "shards": records,
        "totals": {"samples": total, "shards": len(records), "bytes": sum(r["bytes"] for r in records)},
        "classes": _classes(cfg),
        "categories": cfg.categories,
        "label_counts": dict(sorted(labels.items(), key=lambda kv: int(kv[0]))),
        "components": dict(sorted(components.items())),
        "stats": dict(sorted(stats.items())),
        "command": cfg.command,
        "seed": cfg.seed,
        "options": cfg.options,
        **_recommended(cfg),
    }


def _recommended(cfg: JobConfig) -> dict:
    from .recommended import KEY
    return {KEY: cfg.recommended} if cfg.recommended is not None else {}


def _classes(cfg: JobConfig):
    if not cfg.classes:
        return None
    return {"names": list(cfg.classes), "ids": {n: i for i, n in enumerate(cfg.classes)}}


def _write_manifests(cfg: JobConfig, out: Path, result: JobResult) -> None:
    rejects = {"rejected_samples": result.rejected, "converted_samples": result.converted,
               "rejected_boxes": result.rejected_boxes, "converted_boxes": result.converted_boxes,
               "file": REJECTS_NAME}
    named = [s for s in result.splits if s.name]
    if not named:
        (only,) = result.splits
        write_json_atomic(out / MANIFEST_NAME, {**only.manifest, "rejects": rejects})
        return
    for s in named:
        write_json_atomic(s.directory / MANIFEST_NAME, {**s.manifest, "rejects_file": f"../{REJECTS_NAME}"})
    from clvr import __version__ as clvr_version

    root = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "clvr_version": clvr_version,
        "kind": cfg.kind,
        "splits": {s.name: {"path": s.name, **s.manifest["totals"]} for s in named},
        "totals": {"samples": result.samples, "shards": sum(s.shards for s in named),
                   "bytes": sum(s.bytes for s in named)},
        "classes": _classes(cfg),
        "categories": cfg.categories,
        "components": dict(sorted(sum((Counter(s.manifest["components"]) for s in named), Counter()).items())),
        "rejects": rejects,
        "command": cfg.command,
        "seed": cfg.seed,
        "options": cfg.options,
        **_recommended(cfg),
    }
    write_json_atomic(out / MANIFEST_NAME, root)


def print_summary(result: JobResult, out: Path, stream=None) -> None:
    w = (stream or sys.stdout).write
    rate = result.samples / result.seconds if result.seconds > 0 else float("nan")
    w(f"wrote {result.samples} samples to {out} in {result.seconds:.1f}s ({rate:.0f} samples/s)"
      + (" [resumed]" if result.resumed else "") + "\n")
    for s in result.splits:
        label = s.name or "shards"
        w(f"  {label:<6} {s.samples:>8} samples  {s.shards:>4} shard(s)  {s.bytes / 1e6:9.2f} MB  "
          f"{s.directory}\n")
    w(f"  rejected {result.rejected} sample(s), converted {result.converted}"
      + (f"; boxes: rejected {result.rejected_boxes}, clipped {result.converted_boxes}"
         if result.rejected_boxes or result.converted_boxes else "")
      + (f"  (reasons: {result.rejects_path})" if os.path.getsize(result.rejects_path) else "") + "\n")

"""``clvr shard verify`` for a set indexed by ``clvr shard index`` (tars written by other tools,
read as they are):

1. every tar (in ``tar_dir``) exists and its size and sha256 match the manifest;
2. every index file parses and equals the index ``clvr shard index`` would write for its tar now
   (the samples with an image or video, their members and offsets);
3. every side file parses, pairs with its tar, lists the tar's keys in index order (one per index
   line), and its labels are class ids (-1..classes-1) that agree with the labels the tars hold
   (``label_source``) and with the manifest's ``label_counts`` and ``unlabelled``;
4. every sample decodes (``--sample N``: N drawn at random): images with PIL in whatever mode
   they are stored (no check of clvr's own normalised RGB), ``.json`` parses, videos probe.

Returns the list of problems, as :func:`clvr.shards.verify.verify_set` does.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path

from .dali_index import IndexedComponent, IndexFileError, check_keys, field_name, format_index, parse_index, read_index
from .errors import Reject, ShardError
from .fileio import file_problems
from .format import META_EXT, VIDEO_EXTS
from .foreign import FOREIGN_IMAGE_EXTS, media_samples, read_samples_file
from .foreign_labels import assign_labels, raw_label
from .manifest import MANIFEST_NAME, plain_name
from .progress import Progress


def _decode_foreign(where: str, ext: str, data: bytes) -> str | None:
    """Whether a foreign sample's member decodes: images with PIL (any mode: other tools store
    CMYK, grayscale and progressive JPEGs), ``.json`` parses, videos probe. None: it does."""
    low = ext.lower()
    try:
        if low in FOREIGN_IMAGE_EXTS:
            from PIL import Image
            with Image.open(io.BytesIO(data)) as im:
                im.verify()              # PNG: every chunk's CRC
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        elif low in VIDEO_EXTS:
            from .videos import probe
            probe(data, decode=True)
        elif low == META_EXT:
            json.loads(data)
    except Reject as e:
        return f"{where}.{ext}: does not decode ({e.reason})"
    except Exception as e:  # any failure to decode is a problem to report, not to raise
        return f"{where}.{ext}: does not decode ({type(e).__name__}: {e})"
    return None


def _first_index_difference(written, rebuilt, keys: list[str]) -> str:
    """Where an index file and the index rebuilt from its tar first differ, in words."""
    if len(written) != len(rebuilt):
        return f"it lists {len(written)} samples, the tar has {len(rebuilt)} with an image or video"
    for n, (w, r) in enumerate(zip(written, rebuilt)):
        if w != r:
            line = f"line {n + 2} (key {keys[n]})"
            if len(w) != len(r):
                return f"{line}: {len(w)} members, the tar has {len(r)}"
            for a, b in zip(w, r):
                if a != b:
                    member = f"{keys[n]}.{b.ext}" if b.name == field_name(f"{keys[n]}.{b.ext}") else b.name
                    got = ", ".join(f"{f} {getattr(a, f)!r}" for f in ("ext", "offset", "size", "name")
                                    if getattr(a, f) != getattr(b, f))
                    want = ", ".join(f"{f} {getattr(b, f)!r}" for f in ("ext", "offset", "size", "name")
                                     if getattr(a, f) != getattr(b, f))
                    return f"{line}, member {member}: {got} but the tar has {want}"
    return "the two differ"


def _rebuild(tar: Path) -> tuple[list, list]:
    """What ``clvr shard index`` finds in ``tar`` now: its samples with an image or video
    (``ForeignSample``s, labels' bytes read) and their index entries."""
    kept = media_samples(tar)
    entries = [[IndexedComponent(ext, m.offset, m.size, m.name) for ext, m in s.members] for s in kept]
    # the index as written and parsed back (names with white space percent-encoded)
    return kept, parse_index(format_index(entries), str(tar))


def verify_foreign(directory: Path, manifest: dict, sample: int | None = None, seed: int = 0,
                   progress: bool = True) -> list[str]:
    """Check a set indexed by ``clvr shard index``: every tar against the manifest (size,
    sha256), every index and side file against what the command would write for the tar now
    (members, offsets, keys, labels), the label counts, and that the samples decode."""
    where_manifest = f"{directory}/{MANIFEST_NAME}"
    problems = []
    if manifest.get("index_from") != "order":
        problems.append(f"{where_manifest}: index_from = {manifest.get('index_from')!r}; a set of clvr shard "
                        "index numbers its samples by 'order'")
    tar_dir = manifest.get("tar_dir", ".")
    if not isinstance(tar_dir, str) or not tar_dir:
        return problems + [f"{where_manifest}: tar_dir = {tar_dir!r} must name the tars' folder"]
    for k, s in enumerate(manifest["shards"]):
        if not plain_name(s.get("samples_file")):
            problems.append(f"{where_manifest}: shards[{k}].samples_file = {s.get('samples_file')!r} is not a "
                            "file name in the set")
    if problems:
        return problems
    tars = directory / tar_dir
    classes = manifest.get("classes")
    n_classes = len(classes["names"]) if classes else 0
    label_source = manifest.get("label_source")
    shards = manifest["shards"]
    total = sum(s["samples"] for s in shards)
    chosen = None
    if sample is not None and sample < total:
        chosen = set(random.Random(seed).sample(range(total), sample))
    counts, unlabelled, position = Counter(), 0, 0
    raw_labels, raw_where, side_labels = [], [], []   # for the labels' agreement with the tars
    bar = Progress(total, f"verify {directory.name}", enabled=progress)
    try:
        for s in shards:
            tar, idx, side = tars / s["name"], directory / s["index"], directory / s["samples_file"]
            first, position = position, position + s["samples"]
            if s["first_index"] != first:
                problems.append(f"{tar}: first_index {s['first_index']} but {first} expected")
            # the side file: keys and labels, one per index line
            keys, labels = None, None
            try:
                data = read_samples_file(side)
                keys, labels = data["keys"], data.get("labels")
                if data.get("tar") != s["name"]:
                    problems.append(f"{side}: written for tar {data.get('tar')!r}, the manifest pairs it with "
                                    f"{s['name']}")
                if not all(isinstance(k, str) for k in keys):
                    problems.append(f"{side}: keys must be strings")
                    keys = None
            except ShardError as e:
                problems.append(str(e))
            except TypeError:                # "labels" that is not a list
                problems.append(f"{side}: 'labels' must be a list of class ids or null; re-run clvr shard index")
            if labels is not None and not isinstance(labels, list):
                keys, labels = None, None
            if keys is not None and len(keys) != s["samples"]:
                problems.append(f"{side}: {len(keys)} keys, the manifest says {s['samples']} samples")
            if labels is not None and keys is not None:
                if not classes:
                    problems.append(f"{side}: has labels but the manifest has no classes")
                for n, lab in enumerate(labels):
                    if isinstance(lab, bool) or not isinstance(lab, int) or not -1 <= lab < n_classes:
                        problems.append(f"{side}: sample {n + 1} (key {keys[n]}): label {lab!r} is not a class "
                                        f"id in -1..{n_classes - 1}")
                    elif lab >= 0:
                        counts[lab] += 1
                    else:
                        unlabelled += 1
            elif labels is None and keys is not None and classes:
                problems.append(f"{side}: no labels, but the manifest has classes (labels from {label_source!r})")
            # the index file
            written = None
            try:
                written = read_index(idx)
            except IndexFileError as e:
                problems.append(str(e))
            if written is not None and keys is not None:
                try:
                    check_keys(written, keys, str(idx), str(side))
                except IndexFileError as e:
                    problems.append(str(e))
            # the tar
            if not tar.is_file():
                problems.append(f"{tar}: missing, or not a file (tar_dir {tar_dir!r} in {where_manifest})")
                bar.update(s["samples"])
                continue
            problems += file_problems(tar, s)
            try:
                kept, rebuilt = _rebuild(tar)
            except ShardError as e:
                problems.append(str(e))
                bar.update(s["samples"])
                continue
            true_keys = [x.key for x in kept]
            if len(rebuilt) != s["samples"]:
                problems.append(f"{tar}: {len(rebuilt)} samples with an image or video, manifest says {s['samples']}")
            if written is not None and written != rebuilt:
                problems.append(f"{idx}: not the index of {tar.name} as it is now: "
                                + _first_index_difference(written, rebuilt, true_keys)
                                + " (re-run clvr shard index)")
            if keys is not None and keys != true_keys:
                n = next((n for n, (a, b) in enumerate(zip(keys, true_keys)) if a != b), min(len(keys), len(true_keys)))
                a = repr(keys[n]) if n < len(keys) else "nothing"
                b = repr(true_keys[n]) if n < len(true_keys) else "nothing"
                problems.append(f"{side}: sample {n + 1} is key {a} there, {b} in {tar.name}")
            if labels is not None and label_source and keys == true_keys and len(labels) == len(kept):
                for x, lab in zip(kept, labels):
                    where = f"{tar.name}:{x.key}"
                    try:
                        raw_labels.append(raw_label(tar, x, label_source))
                    except ShardError as e:      # (names the tar and key)
                        problems.append(str(e))
                        raw_labels.append(None)
                    raw_where.append(where)
                    side_labels.append((side, lab))
            # decoding: every sample, or the chosen ones
            with open(tar, "rb") as f:
                for n, x in enumerate(kept):
                    if chosen is None or first + n in chosen:
                        where = f"{tar.name}:{x.key}"
                        for ext, m in x.members:
                            f.seek(m.offset)
                            problem = _decode_foreign(where, ext, f.read(m.size))
                            if problem:
                                problems.append(problem)
                    bar.update()
            bar.update(max(0, s["samples"] - len(kept)))
    finally:
        bar.close()
    problems += _label_problems(manifest, where_manifest, counts, unlabelled, raw_labels, raw_where, side_labels)
    return problems


def _label_problems(manifest, where, counts, unlabelled, raw_labels, raw_where, side_labels) -> list[str]:
    """The manifest's label counts against the side files, and the side files' labels against
    the labels the tars hold (``label_source``), as ``clvr shard index`` assigns them."""
    problems = []
    recorded = manifest.get("label_counts") or {}
    found = {str(k): v for k, v in sorted(counts.items())}
    if not isinstance(recorded, dict) or {str(k): v for k, v in recorded.items()} != found:
        diff = sorted({*map(str, recorded), *found} if isinstance(recorded, dict) else found,
                      key=lambda k: (len(k), k))
        shown = ", ".join(f"{k}: {recorded.get(k) if isinstance(recorded, dict) else None} vs {found.get(k)}"
                          for k in diff if not isinstance(recorded, dict) or recorded.get(k) != found.get(k))
        problems.append(f"{where}: label_counts do not match the side files' labels (manifest vs side files: "
                        f"{shown})")
    record = manifest.get("unlabelled")
    recorded_unlabelled = record.get("count", 0) if isinstance(record, dict) else record
    if manifest.get("classes") and recorded_unlabelled != unlabelled:
        problems.append(f"{where}: unlabelled.count = {recorded_unlabelled!r} but the side files have "
                        f"{unlabelled} label(s) -1")
    if raw_labels and manifest.get("classes"):
        try:
            names = manifest["classes"]["names"]
            table = manifest["classes"].get("ids")
            if not isinstance(table, dict):
                table = {str(n): i for i, n in enumerate(names)}
            ids, _ = assign_labels(raw_labels, raw_where, {"names": names, "ids": table})
        except ShardError as e:
            return problems + [str(e)]
        for w, (side, lab), expected in zip(raw_where, side_labels, ids):
            if lab != expected:
                problems.append(f"{side}: {w} has label {lab!r}, but its {_source_text(manifest)} gives "
                                f"{expected}")
    return problems


def _source_text(manifest) -> str:
    source = manifest.get("label_source") or ""
    return f".json field {source[5:]!r}" if source.startswith("json:") else f".{source} member"



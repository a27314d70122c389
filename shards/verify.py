"""``clvr shard verify``: check a shard set against its manifest.

1. the manifest exists (its absence means an interrupted run) and parses;
2. every shard's size and sha256 match the manifest, and no stray ``.tmp`` file remains;
3. every DALI index file equals the index rebuilt from the tar's headers;
4. sample keys and ``index.i64`` agree, and indices run 0..N-1 without gap or repeat;
5. every sample decodes (``--sample N``: N samples drawn at random, plus the structural checks
   of all): images with PIL, videos with PyAV, ``.json`` parses, ``.i64``/``.f32`` lengths fit.

A set indexed by ``clvr shard index`` (``kind: foreign``, tars written by other tools, read as
they are) gets its own checks (:func:`verify_foreign`):

1. every tar (in ``tar_dir``) exists and its size and sha256 match the manifest;
2. every index file parses and equals the index ``clvr shard index`` would write for its tar now
   (the samples with an image or video, their members and offsets);
3. every side file parses, pairs with its tar, lists the tar's keys in index order (one per index
   line), and its labels are class ids (-1..classes-1) that agree with the labels the tars hold
   (``label_source``) and with the manifest's ``label_counts`` and ``unlabelled``;
4. every sample decodes (``--sample N``: N drawn at random): images with PIL in whatever mode
   they are stored (no check of clvr's own normalised RGB), ``.json`` parses, videos probe.

Returns the list of problems; the command exits non-zero when it is not empty.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

from .dali_index import (IndexedComponent, IndexFileError, check_keys, field_name, format_index, index_tar,
                         parse_index, read_index)
from .errors import Reject, ShardError
from .fileio import sha256_file
from .format import (BOXCLS_EXT, BOXES_EXT, CLS_EXT, IMAGE_EXTS, INDEX_EXT, LABEL_EXT, META_EXT, TEXT_EXT,
                     VIDEO_EXTS, decode_boxes, decode_int64, sample_key)
from .foreign import (FOREIGN_IMAGE_EXTS, KIND as FOREIGN_KIND, LABEL_EXTS, MEDIA_EXTS, raw_label, read_members,
                      assign_labels, group_members, read_samples_file)
from .images import ImageOptions, prepare_image
from .manifest import MANIFEST_NAME, plain_name, read_manifest, shard_sets, structure_problems
from .progress import Progress
from .shard_writer import TMP_SUFFIX


def _check_sample(where: str, comps: dict[str, bytes], n_classes: int | None) -> list[str]:
    problems = []
    for ext, data in comps.items():
        try:
            if ext in IMAGE_EXTS:
                # the checks of sharding itself: a stored image passes them unchanged
                image = prepare_image(data, ImageOptions(max_pixels=2**62))
                if image.notes or image.data != data or image.ext != ext:
                    problems.append(f"{where}.{ext}: not a normalised 8-bit RGB {ext} "
                                    f"({'; '.join(image.notes) or 'stored as ' + image.ext})")
            elif ext in VIDEO_EXTS:
                from .videos import probe
                probe(data, decode=True)
            elif ext == META_EXT:
                json.loads(data)
            elif ext == TEXT_EXT:
                if not data.decode("utf-8").strip():
                    problems.append(f"{where}.{ext}: empty caption")
            elif ext == CLS_EXT:
                int(data.decode())
            elif ext in (INDEX_EXT, LABEL_EXT):
                decode_int64(data)
        except Reject as e:
            problems.append(f"{where}.{ext}: does not decode ({e.reason})")
        except Exception as e:  # any failure to decode is a problem to report, not to raise
            problems.append(f"{where}.{ext}: does not decode ({type(e).__name__}: {e})")
    if LABEL_EXT in comps and CLS_EXT in comps:
        try:
            lab = decode_int64(comps[LABEL_EXT])
            if str(lab) != comps[CLS_EXT].decode():
                problems.append(f"{where}: label.i64 = {lab} but .cls = {comps[CLS_EXT].decode()!r}")
            if n_classes is not None and not -1 <= lab < n_classes:
                problems.append(f"{where}: label {lab} outside 0..{n_classes - 1}")
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{where}: bad label ({e})")
    if (BOXES_EXT in comps) != (BOXCLS_EXT in comps):
        problems.append(f"{where}: has only one of boxes.f32 / boxcls.i64")
    elif BOXES_EXT in comps:
        try:
            decode_boxes(comps[BOXES_EXT], comps[BOXCLS_EXT])
        except ValueError as e:
            problems.append(f"{where}: {e}")
    return problems


def verify_set(directory: Path, manifest: dict, sample: int | None = None, seed: int = 0,
               progress: bool = True) -> list[str]:
    problems = structure_problems(manifest, f"{directory}/{MANIFEST_NAME}")
    if problems:
        return problems  # the checks below rely on the structure
    if manifest.get("kind") == FOREIGN_KIND:
        return verify_foreign(directory, manifest, sample=sample, seed=seed, progress=progress)
    shards = manifest["shards"]
    listed = {s["name"] for s in shards} | {s["index"] for s in shards}
    for p in sorted(directory.iterdir()):
        if p.name.endswith(TMP_SUFFIX):
            problems.append(f"{p}: leftover temporary file of an interrupted run")
        elif p.suffix in (".tar", ".idx") and p.name not in listed:
            problems.append(f"{p}: not listed in the manifest")
    total = sum(s["samples"] for s in shards)
    chosen = None
    if sample is not None and sample < total:
        chosen = set(random.Random(seed).sample(range(total), sample))
    n_classes = len(manifest["classes"]["names"]) if manifest.get("classes") else None
    expected_index = 0
    bar = Progress(total, f"verify {directory.name}", enabled=progress)
    try:
        for s in shards:
            tar = directory / s["name"]
            idx = directory / s["index"]
            if not tar.is_file():
                problems.append(f"{tar}: missing, or not a file")
                expected_index += s["samples"]
                continue
            size = tar.stat().st_size
            if size != s["bytes"]:
                problems.append(f"{tar}: {size} bytes, manifest says {s['bytes']}")
            digest = sha256_file(tar)
            if digest != s["sha256"]:
                problems.append(f"{tar}: sha256 {digest[:12]}… does not match the manifest's {s['sha256'][:12]}…")
            try:
                actual = index_tar(tar)
            except (tarfile.TarError, OSError) as e:
                problems.append(f"{tar}: not a readable tar ({e})")
                expected_index += s["samples"]
                continue
            if not idx.is_file():
                problems.append(f"{idx}: missing DALI index, or not a file")
            else:
                try:
                    written = parse_index(idx.read_text(), str(idx))
                    if written != actual:
                        problems.append(f"{idx}: does not match the members of {tar.name}")
                except UnicodeDecodeError:
                    problems.append(f"{idx}: not a text file")
                except ValueError as e:
                    problems.append(str(e))
            if len(actual) != s["samples"]:
                problems.append(f"{tar}: {len(actual)} samples, manifest says {s['samples']}")
            if s.get("first_index") != expected_index:
                problems.append(f"{tar}: first_index {s.get('first_index')} but {expected_index} expected")
            with open(tar, "rb") as f:
                for entries in actual:
                    key = entries[0].name.split(".", 1)[0]
                    where = f"{tar.name}:{key}"
                    comps = {}
                    for c in entries:
                        f.seek(c.offset)
                        comps[c.ext] = f.read(c.size)
                    if key != sample_key(expected_index):
                        problems.append(f"{where}: key should be {sample_key(expected_index)} (indices must run "
                                        "0..N-1 in order)")
                    if INDEX_EXT not in comps:
                        problems.append(f"{where}: no {INDEX_EXT}")
                    else:
                        try:
                            if decode_int64(comps[INDEX_EXT]) != expected_index:
                                problems.append(f"{where}: {INDEX_EXT} = {decode_int64(comps[INDEX_EXT])}, "
                                                f"expected {expected_index}")
                        except ValueError as e:
                            problems.append(f"{where}: {INDEX_EXT}: {e}")
                    if chosen is None or expected_index in chosen:
                        problems += _check_sample(where, comps, n_classes)
                    expected_index += 1
                    bar.update()
    finally:
        bar.close()
    return problems


# -- sets indexed by ``clvr shard index`` (kind "foreign") ----------------------------------------

def _label_member(name: str) -> bool:
    """Members whose bytes the rebuild keeps: the small ones a label may come from."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    return ext in (*LABEL_EXTS, META_EXT)


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
    samples = group_members(tar, read_members(tar, _label_member), Counter(), [])
    kept = [s for s in samples if any(e in MEDIA_EXTS for e in s.exts())]
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
            size = tar.stat().st_size
            if size != s["bytes"]:
                problems.append(f"{tar}: {size} bytes, manifest says {s['bytes']}")
            digest = sha256_file(tar)
            if digest != s["sha256"]:
                problems.append(f"{tar}: sha256 {digest[:12]}… does not match the manifest's {s['sha256'][:12]}…")
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


def verify(out, sample: int | None = None, seed: int = 0, progress: bool = True) -> list[str]:
    try:
        sets = shard_sets(out)
    except ShardError as e:
        return [str(e)]
    problems = _root_problems(Path(out), sets)
    for _, (directory, manifest) in sets.items():
        problems += verify_set(directory, manifest, sample=sample, seed=seed, progress=progress)
    return problems


def _root_problems(out: Path, sets) -> list[str]:
    """A root manifest with splits must agree with each split's own manifest."""
    root = read_manifest(out)
    if "splits" not in root:
        return []
    where = f"{out if out.is_dir() else out.parent}/{MANIFEST_NAME}"
    problems = []
    totals = {"samples": 0, "shards": 0, "bytes": 0}
    root_totals = root.get("totals") if isinstance(root.get("totals"), dict) else {}
    for name, (directory, manifest) in sets.items():
        recorded = root["splits"][name]
        if manifest.get("split") != name:
            problems.append(f"{where}: split {name!r} points at {directory}, which holds split "
                            f"{manifest.get('split')!r}")
        for key in totals:
            value = (manifest.get("totals") or {}).get(key)
            if recorded.get(key) != value:
                problems.append(f"{where}: splits.{name}.{key} = {recorded.get(key)!r} but {directory}'s "
                                f"manifest says {value!r}")
            if isinstance(value, int):
                totals[key] += value
    for key, value in totals.items():
        if root_totals.get(key) != value:
            problems.append(f"{where}: totals.{key} = {root_totals.get(key)!r} but the splits add up to {value}")
    dirs = [d.resolve() for d, _ in sets.values()]
    if len(set(dirs)) != len(dirs):
        problems.append(f"{where}: two splits point at the same folder")
    return problems

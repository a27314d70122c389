"""``clvr shard verify``: check a shard set against its manifest.

1. the manifest exists (its absence means an interrupted run) and parses;
2. every shard's size and sha256 match the manifest, and no stray ``.tmp`` file remains;
3. every DALI index file equals the index rebuilt from the tar's headers;
4. sample keys and ``index.i64`` agree, and indices run 0..N-1 without gap or repeat;
5. every sample decodes (``--sample N``: N samples drawn at random, plus the structural checks
   of all): images with PIL, videos with PyAV, ``.json`` parses, ``.i64``/``.f32`` lengths fit.

A set indexed by ``clvr shard index`` (``kind: foreign``) gets the checks of
:mod:`.verify_foreign`.

Returns the list of problems; the command exits non-zero when it is not empty.
"""

from __future__ import annotations

import json
import random
import tarfile
from pathlib import Path

from .dali_index import index_tar, parse_index
from .errors import Reject, ShardError
from .fileio import file_problems
from .format import (BOXCLS_EXT, BOXES_EXT, CLS_EXT, IMAGE_EXTS, INDEX_EXT, LABEL_EXT, META_EXT, TEXT_EXT,
                     VIDEO_EXTS, decode_boxes, decode_int64, sample_key)
from .foreign import KIND as FOREIGN_KIND
from .images import ImageOptions, prepare_image
from .manifest import MANIFEST_NAME, read_manifest, shard_sets, structure_problems
from .progress import Progress
from .shard_writer import TMP_SUFFIX
from .verify_foreign import verify_foreign


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
            problems += file_problems(tar, s)
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

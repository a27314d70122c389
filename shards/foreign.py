"""``clvr shard index``: make WebDataset tars written by other tools readable by clvr, unchanged.

img2dataset, open_clip's tools and ``webdataset.ShardWriter`` write tars of samples such as
``KEY.jpg`` + ``KEY.cls`` (or ``KEY.txt``, ``KEY.json``), with no DALI index files and no
manifest. This writes them, without rewriting a tar:

- one DALI index file per tar (``NAME.idx``, the ``wds2idx`` v1.2 format) listing the samples
  that have an image (or a video). A sample without one is left out of the index (so it is never
  read) and counted, with its key, in the summary and in ``skipped`` of the manifest;
- one side file per tar (``NAME.samples.json``): each indexed sample's true key and label, in
  index order. The index's name field cannot carry every name (DALI splits its fields at spaces),
  and the labels may live in ``.json`` members that DALI does not parse;
- a ``manifest.json`` (``kind: foreign``) with every tar's size and sha256, the components as
  written, the image sizes (``stats`` ``image_side:*``), the classes and where the labels came from.

Member names are read as Python's tarfile reads them (PAX long and non-ASCII names included), and
a member's key is webdataset's: the whole path up to the first dot of the file name, folders
included (``train/n01440764/n01440764_0001.JPEG`` -> key ``train/n01440764/n01440764_0001``,
extension ``JPEG``). Extensions are matched without regard to case and written as they stand.
One departure, where webdataset's rule finds no image in a run of members: file names with dots
before the extension (``img.0001.jpg``, which the rule reads as key ``img`` with the extension
``0001.jpg``, merging every such file of a folder into one sample) are keyed up to their known
extension (``img.0001``) and counted in the summary.

Labels (``--label-key``, :mod:`.foreign_labels`): the first of the components
:data:`~.foreign_labels.LABEL_EXTS` that the set has, else the first field of
:data:`~.foreign_labels.JSON_LABEL_FIELDS` that its ``.json`` members have, else none; ``--label-key json:FIELD`` or ``--label-key EXT`` chooses, ``none``
turns them off. Integer labels keep their value as the class id (``-1``: unlabelled); other
labels are class names, numbered in sorted order. ``--classes-from DIR`` takes another set's
classes instead (index a validation set with its training set's ids). A sample without a label
in a labelled set gets ``-1``: counted, listed by key in the manifest (``unlabelled``) and
reported; evaluation leaves such samples out.

The samples carry no ``index.i64``: their global index is their position in the manifest's
order (shard ``first_index`` + position in its index file), which is what
:mod:`clvr.pipeline` assigns when it reads them (from the tar and offset DALI reports).
Whatever is written is parsed back and checked against its tar before the command succeeds.

In place (the default) the files go beside the tars; with ``--out DIR`` they go to DIR, and the
manifest's ``tar_dir`` says where the tars are (relative to DIR when it can). Running it again
replaces what it wrote.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .dali_index import (IndexedComponent, IndexFileError, check_against_tar, check_keys, field_name,
                         format_index, parse_index)
from .errors import ShardError
from .fileio import sha256_file, write_atomic
from .format import (BOXCLS_EXT, BOXES_EXT, FORMAT_NAME, FORMAT_VERSION, INDEX_EXT,
                     LABEL_EXT, META_EXT, READ_IMAGE_EXTS, TEXT_EXT, UNLABELLED, VIDEO_EXTS, json_bytes,
                     split_member_name)
from .foreign_labels import (LABEL_EXTS, assign_labels, check_source, classes_of, find_label_source,
                             label_source_text, raw_label, source_of_key)
from .manifest import MANIFEST_NAME, write_json_atomic
from .sizes import bucket

#: image extensions other tools write beside clvr's (DALI decodes by content); matched in any case
FOREIGN_IMAGE_EXTS = READ_IMAGE_EXTS
#: images that webdataset decodes (through PIL) but DALI does not: such samples are skipped, by name
UNREAD_IMAGE_EXTS = ("gif", "blp", "dib", "ico", "icns", "tga", "psd", "eps", "pcx", "sgi", "im")
MEDIA_EXTS = (*FOREIGN_IMAGE_EXTS, *VIDEO_EXTS)
KNOWN_EXTS = {*MEDIA_EXTS, *UNREAD_IMAGE_EXTS, INDEX_EXT, LABEL_EXT, *LABEL_EXTS, BOXES_EXT, BOXCLS_EXT,
              TEXT_EXT, META_EXT, "url.txt", "key", "caption"}
KIND = "foreign"
SAMPLES_SUFFIX = ".samples.json"
COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
SAMPLES_FORMAT = "clvr-index-samples"


@dataclass
class IndexResult:
    out: Path
    samples: int = 0
    shards: int = 0
    skipped: list = field(default_factory=list)          # {"shard", "key", "reason"}
    unknown: Counter = field(default_factory=Counter)    # extension -> members
    classes: list | None = None
    label_source: str | None = None
    unlabelled: list = field(default_factory=list)       # {"shard", "key"}
    dotted: list = field(default_factory=list)           # member names keyed up to a known extension
    encoded: list = field(default_factory=list)          # member names percent-encoded in the index
    label_hint: str | None = None
    label_ids: set = field(default_factory=set)          # the class ids that samples carry

    def summary(self) -> str:
        lines = [f"indexed {self.samples:,} samples in {self.shards} shard(s); manifest {self.out / MANIFEST_NAME}"]
        if self.classes:
            ids = sorted(self.label_ids)
            sparse = f" (ids {', '.join(map(str, ids[:6]))}{' ...' if len(ids) > 6 else ''} of {len(self.classes)})" \
                if len(ids) < len(self.classes) else ""
            lines.append(f"  {len(ids)} classes{sparse}, labels from {label_source_text(self.label_source)}")
        elif self.label_hint:
            lines.append(f"  no labels: {self.label_hint}")
        if self.unlabelled:
            lines.append(f"  WARNING: {len(self.unlabelled)} of {self.samples:,} sample(s) have no label "
                         f"(label -1, left out of evaluation; listed in the manifest's 'unlabelled'): "
                         + _first_keys(self.unlabelled))
        for what, records in (("without an image or video", [s for s in self.skipped if s["reason"].startswith("no ")]),
                              ("with an image DALI cannot decode", [s for s in self.skipped
                                                                    if not s["reason"].startswith("no ")])):
            if records:
                lines.append(f"  skipped {len(records)} sample(s) {what}: " + _first_keys(records))
        if self.dotted:
            lines.append(f"  {len(self.dotted)} sample(s) with dots in the file name, keyed up to the extension "
                         f"(e.g. {self.dotted[0]!r}; webdataset's rule would cut the key at the first dot)")
        if self.encoded:
            lines.append(f"  {len(self.encoded)} member name(s) with white space, percent-encoded in the index "
                         f"files (e.g. {self.encoded[0]!r}); the true keys are in the *{SAMPLES_SUFFIX} side files")
        if self.unknown:
            lines.append("  unknown extensions (kept, never read): "
                         + ", ".join(f".{e} ({n})" for e, n in sorted(self.unknown.items())))
        return "\n".join(lines)


def _first_keys(records: list, n: int = 5) -> str:
    first = ", ".join(f"{Path(s['shard']).name}:{s['key']}" for s in records[:n])
    return first + (f" and {len(records) - n} more" if len(records) > n else "")


def find_tars(src) -> list[Path]:
    """The tars to index: a directory's ``*.tar`` (sorted by name), or the given files."""
    paths = [Path(p) for p in (src if isinstance(src, (list, tuple)) else [src])]
    if len(paths) == 1 and paths[0].is_dir():
        tars = sorted(p for p in paths[0].iterdir() if p.suffix == ".tar" and p.is_file())
        if not tars:
            packed = sorted(p.name for p in paths[0].iterdir() if p.name.endswith(COMPRESSED))
            if packed:
                raise ShardError(f"{paths[0]}: no .tar files to index, but {len(packed)} compressed tar(s) such as "
                                 f"{packed[0]}: DALI reads uncompressed tars only (decompress them, e.g. gunzip)")
            below = sorted({p.parent for p in paths[0].rglob("*.tar") if p.is_file()})
            if below:
                folders = ", ".join(str(d) for d in below[:4]) + (" ..." if len(below) > 4 else "")
                raise ShardError(f"{paths[0]}: no .tar files in the folder itself, but its subfolders hold some "
                                 f"({folders}): index each folder (a split) on its own, e.g. clvr shard index "
                                 f"{below[0]}")
            raise ShardError(f"{paths[0]}: no .tar files to index")
        return tars
    for p in paths:
        if not p.is_file():
            raise ShardError(f"{p}: no such tar file")
        if p.name.endswith(COMPRESSED):
            raise ShardError(f"{p}: a compressed tar; DALI reads uncompressed tars only (decompress it, e.g. gunzip)")
        if p.suffix != ".tar":
            raise ShardError(f"{p}: not a .tar file (give tars or a folder of them)")
    return paths


# -- reading a tar's members into samples ----------------------------------------------------

@dataclass
class Member:
    name: str
    offset: int
    size: int
    data: bytes | None = None      # read for labels, .json and images (sizes); None otherwise


@dataclass
class ForeignSample:
    key: str
    members: list                  # [(ext as written, Member)]

    def exts(self) -> dict[str, str]:
        """lower-case extension -> extension as written"""
        return {e.lower(): e for e, _ in self.members}

    def data(self, ext_lower: str) -> bytes | None:
        for e, m in self.members:
            if e.lower() == ext_lower:
                return m.data
        return None


def _is_media(ext: str) -> bool:
    return ext.lower() in MEDIA_EXTS


def _known_suffix(ext: str) -> str | None:
    """The longest tail of ``ext`` after one of its dots that is a known extension
    (``0001.jpg`` -> ``jpg``, ``0001.label.i64`` -> ``label.i64``)."""
    for i, c in enumerate(ext):
        if c == "." and ext[i + 1:].lower() in KNOWN_EXTS:
            return ext[i + 1:]
    return None


def read_members(tar: Path, wanted) -> list[Member]:
    try:
        tf = tarfile.open(tar, "r:")
    except (tarfile.TarError, OSError) as e:
        raise ShardError(f"{tar}: not a readable tar ({e})") from None
    out = []
    with tf:
        try:
            for m in tf:
                if not m.isreg():
                    continue
                data = None
                if wanted(m.name):
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
                out.append(Member(m.name, m.offset_data, m.size, data))
        except tarfile.TarError as e:
            raise ShardError(f"{tar}: the tar is damaged ({e})") from None
    return out


def group_members(tar: Path, members: list[Member], unknown: Counter, dotted: list) -> list[ForeignSample]:
    """Members in tar order -> samples, by webdataset's key rule (runs of members with one key);
    a run without an image or video whose extensions end in a known one (``img.0001.jpg``) is
    keyed up to that extension instead (names appended to ``dotted``)."""
    runs: list[ForeignSample] = []
    for m in members:
        key, ext = split_member_name(m.name)
        if not key or not ext or key.endswith("/"):
            unknown[ext or "(none)"] += 1
            continue
        if runs and runs[-1].key == key:
            runs[-1].members.append((ext, m))
        else:
            runs.append(ForeignSample(key, [(ext, m)]))
    samples: list[ForeignSample] = []
    for run in runs:
        exts = [e for e, _ in run.members]
        if any(_is_media(e) for e in exts) or not any(_is_media(_known_suffix(e) or "") for e in exts):
            samples.append(run)
            continue
        current: ForeignSample | None = None
        for ext, m in run.members:
            if current is not None and m.name.startswith(current.key + "."):
                current.members.append((m.name[len(current.key) + 1:], m))
                continue
            tail = _known_suffix(ext)
            if tail is None:
                key, tail = run.key, ext
            else:
                key = m.name[:-len(tail) - 1]
                dotted.append(m.name)
            current = ForeignSample(key, [(tail, m)])
            samples.append(current)
    for s in samples:
        seen = {}
        for ext, m in s.members:
            if ext.lower() in seen:
                raise ShardError(f"{tar}: key {s.key!r} has two .{ext.lower()} members ({seen[ext.lower()]!r} and "
                                 f"{m.name!r}); webdataset refuses such a sample too")
            seen[ext.lower()] = m.name
            if ext.lower() not in KNOWN_EXTS:
                unknown[ext] += 1
    return samples


# -- the command -------------------------------------------------------------------------------

def _image_size(data: bytes):
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - an unreadable header is reported, not raised
        return None


def _tail(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""


def _wanted(name: str) -> bool:
    """Members whose bytes the scan reads: labels, .json and images (for the size stats); a
    tar's bytes are let go once its samples are indexed."""
    return _tail(name) in (*LABEL_EXTS, META_EXT, *FOREIGN_IMAGE_EXTS)


def label_member(name: str) -> bool:
    """Members a label may come from."""
    return _tail(name) in (*LABEL_EXTS, META_EXT)


def media_samples(tar: Path, wanted=label_member) -> list[ForeignSample]:
    """The samples of ``tar`` that ``clvr shard index`` indexes (those with an image or video),
    with the bytes of the members ``wanted`` names."""
    return [s for s in group_members(tar, read_members(tar, wanted), Counter(), [])
            if any(e in MEDIA_EXTS for e in s.exts())]


def read_samples_file(path) -> dict:
    """A side file of ``clvr shard index``: {"keys": [...], "labels": [...] or None}."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: cannot read the side file of clvr shard index ({e}); re-run clvr shard index") \
            from None
    if not isinstance(data, dict) or data.get("format") != SAMPLES_FORMAT or not isinstance(data.get("keys"), list):
        raise ShardError(f"{path}: not a side file of clvr shard index; re-run clvr shard index")
    labels = data.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise ShardError(f"{path}: 'labels' is not a list; re-run clvr shard index")
    if labels is not None and len(labels) != len(data["keys"]):
        raise ShardError(f"{path}: {len(data['keys'])} keys but {len(labels)} labels; re-run clvr shard index")
    return data


def index_foreign(src, out=None, progress: bool = True, command: list | None = None,
                  label_key: str | None = None, classes_from=None, recommended: dict | None = None) -> IndexResult:
    """Write DALI index files, side files and a manifest for foreign WebDataset tars (see the
    module doc)."""
    tars = find_tars(src)
    out = Path(out) if out is not None else tars[0].parent
    if (out / MANIFEST_NAME).is_file():
        try:
            kind = json.loads((out / MANIFEST_NAME).read_text()).get("kind")
        except (ValueError, AttributeError):
            kind = None
        if kind != KIND:
            raise ShardError(f"{out / MANIFEST_NAME}: already the manifest of a shard set (kind {kind!r}); "
                             "clvr shard index only replaces what it wrote (use --out DIR for a side folder)")
    dirs = {t.resolve().parent for t in tars}
    if len(dirs) != 1:
        raise ShardError(f"the tars lie in {len(dirs)} folders ({', '.join(map(str, sorted(dirs)))}); "
                         "index one folder at a time")
    tar_dir = dirs.pop()
    names = [t.stem for t in tars]
    if len(set(names)) != len(names):
        raise ShardError("two tars have the same name; their index files would collide")
    reference = classes_of(classes_from) if classes_from is not None else None
    result = IndexResult(out)
    source = source_of_key(label_key) if label_key is not None else None
    found_in = None if label_key is None else -1       # the tar whose samples gave the label source
    hint = "--label-key none" if label_key is not None and source is None else ""
    from .progress import Progress
    bar = Progress(len(tars), "index tars", enabled=progress, unit="tar")
    per_tar = []                     # (tar, sha, bytes, [(key, [IndexedComponent])], [raw label])
    sizes, components, undecodable = Counter(), Counter(), []
    try:
        for n, tar in enumerate(tars):
            samples = group_members(tar, read_members(tar, _wanted), result.unknown, result.dotted)
            kept = []
            for s in samples:
                exts = s.exts()
                if not any(e in MEDIA_EXTS for e in exts):
                    unread = [exts[e] for e in exts if e in UNREAD_IMAGE_EXTS]
                    reason = (f"a .{unread[0]} image, which DALI cannot decode (re-shard with clvr shard images, "
                              "which converts it)" if unread else
                              "no image or video (has: " + ", ".join(sorted(exts.values())) + ")")
                    result.skipped.append({"shard": str(tar), "key": s.key, "reason": reason})
                    continue
                image = next((s.data(e) for e in FOREIGN_IMAGE_EXTS if e in exts), None)
                if image is not None:
                    size = _image_size(image)
                    if size is None:
                        undecodable.append(f"{tar}: key {s.key}")
                    else:
                        sizes[bucket(*size)] += 1
                components.update(e for e, _ in s.members)
                kept.append(s)
            if found_in is None:
                source, hint = find_label_source([(tar, s) for s in kept])
                found_in = n if source is not None else None
            values = [raw_label(tar, s, source) for s in kept] if source is not None else [None] * len(kept)
            entries = [(s.key, [IndexedComponent(ext, m.offset, m.size, m.name) for ext, m in s.members])
                       for s in kept]                 # (the members' bytes are let go here)
            per_tar.append((tar, sha256_file(tar), tar.stat().st_size, entries, values))
            bar.update()
    finally:
        bar.close()
    if not any(entries for *_, entries, _ in per_tar):
        raise ShardError(f"{tar_dir}: no sample with an image or video in {len(tars)} tar(s) "
                         f"(image extensions: {', '.join(FOREIGN_IMAGE_EXTS)}, in any case)")
    if undecodable:
        raise ShardError(f"{len(undecodable)} image(s) whose header cannot be read, e.g. {undecodable[0]}; "
                         "re-shard them with 'clvr shard images', which converts or rejects each")
    if label_key is not None and source is not None:
        check_source(source, label_key, {e.lower() for e in components})
    for n in range(found_in or 0):                  # tars before the one that showed where labels are
        tar = per_tar[n][0]
        per_tar[n] = (*per_tar[n][:4], [raw_label(tar, s, source) for s in media_samples(tar)])
    origins = [(tar, key) for tar, _, _, entries, _ in per_tar for key, _ in entries]
    raw = [v for *_, values in per_tar for v in values]
    ids, classes = (assign_labels(raw, [f"{t}: key {k}" for t, k in origins], reference) if source is not None
                    else ([UNLABELLED] * len(raw), None))
    result.label_hint = hint
    labelled = classes is not None
    if labelled:
        result.label_source, result.classes = source, classes["names"]
        result.label_ids = {i for i in ids if i >= 0}
        result.unlabelled = [{"shard": str(t), "key": k} for (t, k), i in zip(origins, ids) if i < 0]
    elif source is not None:
        result.label_hint = f"{label_source_text(source)} give no label"

    out.mkdir(parents=True, exist_ok=True)
    records, position = [], 0
    for tar, sha, nbytes, kept, _ in per_tar:
        if not kept:
            continue
        stem = tar.stem
        keys = [key for key, _ in kept]
        entries = [comps for _, comps in kept]
        labels = ids[position:position + len(kept)] if labelled else None
        text = format_index(entries)
        result.encoded += [c.name for comps in entries for c in comps if field_name(c.name) != c.name]
        _check_written(text, tar, stem + ".idx", keys)
        write_atomic(out / (stem + SAMPLES_SUFFIX), json_bytes({
            "format": SAMPLES_FORMAT, "version": 1, "tar": tar.name, "keys": keys, "labels": labels}) + b"\n")
        write_atomic(out / (stem + ".idx"), text.encode("utf-8"))
        records.append({"name": tar.name, "index": stem + ".idx", "samples_file": stem + SAMPLES_SUFFIX,
                        "samples": len(kept), "bytes": nbytes, "sha256": sha, "first_index": position})
        position += len(kept)
    result.samples, result.shards = position, len(records)
    try:
        rel = os.path.relpath(tar_dir, out.resolve())
    except ValueError:       # another drive (Windows)
        rel = str(tar_dir)
    label_counts = Counter(str(i) for i in ids if i >= 0)
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": KIND, "split": None,
        "tar_dir": rel, "shards": records,
        "totals": {"samples": result.samples, "shards": len(records), "bytes": sum(r["bytes"] for r in records)},
        "classes": classes, "categories": None, "label_source": source if labelled else None,
        "label_counts": dict(sorted(label_counts.items(), key=lambda kv: int(kv[0]))),
        "unlabelled": {"count": len(result.unlabelled), "samples": result.unlabelled[:1000]},
        "components": dict(sorted(components.items())), "stats": dict(sorted(sizes.items())),
        "skipped": {"count": len(result.skipped), "samples": result.skipped[:1000]},
        "unknown_extensions": dict(sorted(result.unknown.items())),
        "index_from": "order",
        "command": list(command or []), "seed": None,
    }
    if recommended is not None:
        from .recommended import KEY
        manifest[KEY] = recommended
    from clvr import __version__
    manifest["clvr_version"] = __version__
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return result


def _check_written(text: str, tar: Path, index_name: str, keys: list[str]) -> None:
    """Parse the index text back and check it against its tar, as the loader will: whatever
    this command writes, the loader reads (a problem is raised here, naming tar and key)."""
    try:
        parsed = parse_index(text, index_name)
        check_against_tar(parsed, tar, index_name, keys=keys)
        check_keys(parsed, keys, index_name, index_name.replace(".idx", SAMPLES_SUFFIX))
    except IndexFileError as e:
        raise ShardError(f"{tar}: the index written for it does not read back: {e}") from None

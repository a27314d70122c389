"""``clvr shard index``: make WebDataset tars written by other tools readable by clvr, unchanged.

img2dataset, open_clip's tools and ``webdataset.ShardWriter`` write tars of samples such as
``KEY.jpg`` + ``KEY.cls`` (or ``KEY.txt``, ``KEY.json``), with no DALI index files and no
manifest. This writes both, without rewriting a tar:

- one DALI index file per tar (``NAME.idx``, the ``wds2idx`` v1.2 format) listing the samples
  that have an image (or a video). A sample without one is left out of the index (so it is never
  read) and counted, with its key, in the summary and in ``skipped`` of the manifest;
- a ``manifest.json`` (``kind: foreign``) with every tar's size and sha256, the components,
  the image sizes (``stats`` ``image_side:*``), and the classes when every sample has a ``cls``
  (ASCII decimal ids; the distinct ids, sorted, are the class names).

Members with an extension clvr does not know are counted (``unknown_extensions``) and stay in the
index, where no reader asks for them. The samples carry no ``index.i64``: their global index is
their position in the manifest's order (shard ``first_index`` + position in its index file),
which is what :mod:`clvr.pipeline` assigns when it reads them.

In place (the default) the index files and the manifest go beside the tars; with ``--out DIR``
they go to DIR, and the manifest's ``tar_dir`` says where the tars are (relative to DIR when it
can). Running it again replaces what it wrote.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .dali_index import IndexedComponent, format_index
from .errors import ShardError
from .fileio import sha256_file, write_atomic
from .format import (BOXCLS_EXT, BOXES_EXT, CLS_EXT, FORMAT_NAME, FORMAT_VERSION, IMAGE_EXTS, INDEX_EXT,
                     LABEL_EXT, META_EXT, TEXT_EXT, VIDEO_EXTS, split_member_name)
from .manifest import MANIFEST_NAME, write_json_atomic
from .sizes import bucket

#: image extensions other tools write beside clvr's (DALI decodes by content)
FOREIGN_IMAGE_EXTS = (*IMAGE_EXTS, "jpeg")
KNOWN_EXTS = {*FOREIGN_IMAGE_EXTS, *VIDEO_EXTS, INDEX_EXT, LABEL_EXT, CLS_EXT, BOXES_EXT, BOXCLS_EXT,
              TEXT_EXT, META_EXT, "url.txt", "key", "caption"}
KIND = "foreign"


@dataclass
class IndexResult:
    out: Path
    samples: int = 0
    shards: int = 0
    skipped: list = field(default_factory=list)          # {"shard", "key", "reason"}
    unknown: Counter = field(default_factory=Counter)    # extension -> members
    classes: list | None = None

    def summary(self) -> str:
        lines = [f"indexed {self.samples:,} samples in {self.shards} shard(s); manifest {self.out / MANIFEST_NAME}"]
        if self.classes:
            lines.append(f"  {len(self.classes)} classes from .cls")
        if self.skipped:
            first = ", ".join(f"{Path(s['shard']).name}:{s['key']}" for s in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            lines.append(f"  skipped {len(self.skipped)} sample(s) without an image or video: {first}{more}")
        if self.unknown:
            lines.append("  unknown extensions (kept, never read): "
                         + ", ".join(f".{e} ({n})" for e, n in sorted(self.unknown.items())))
        return "\n".join(lines)


def find_tars(src) -> list[Path]:
    """The tars to index: a directory's ``*.tar`` (sorted by name), or the given files."""
    paths = [Path(p) for p in (src if isinstance(src, (list, tuple)) else [src])]
    if len(paths) == 1 and paths[0].is_dir():
        tars = sorted(p for p in paths[0].iterdir() if p.suffix == ".tar" and p.is_file())
        if not tars:
            raise ShardError(f"{paths[0]}: no .tar files to index")
        return tars
    for p in paths:
        if not p.is_file():
            raise ShardError(f"{p}: no such tar file")
        if p.suffix != ".tar":
            raise ShardError(f"{p}: not a .tar file (give tars or a folder of them)")
    return paths


def _scan(tar: Path, unknown: Counter):
    """A tar's samples (list of (key, [IndexedComponent], {ext: bytes} of the .cls and image
    members)), its sha256 and size."""
    samples, seen = [], {}
    try:
        tf = tarfile.open(tar, "r:")
    except (tarfile.TarError, OSError) as e:
        raise ShardError(f"{tar}: not a readable tar ({e})") from None
    with tf:
        try:
            for member in tf:
                if not member.isreg():
                    continue
                key, ext = split_member_name(member.name)
                if not key or not ext:
                    unknown[ext or "(none)"] += 1
                    continue
                if ext not in KNOWN_EXTS:
                    unknown[ext] += 1
                if not samples or samples[-1][0] != key:
                    if key in seen:
                        raise ShardError(f"{tar}: key {key!r} appears again at {member.name!r} after other "
                                         "samples; a sample's members must be contiguous (as webdataset writes them)")
                    seen[key] = len(samples)
                    samples.append((key, [], {}))
                comps, small = samples[-1][1], samples[-1][2]
                comps.append(IndexedComponent(ext, member.offset_data, member.size, member.name))
                if ext == CLS_EXT or ext in FOREIGN_IMAGE_EXTS:
                    f = tf.extractfile(member)
                    small[ext] = f.read() if f is not None else b""
        except tarfile.TarError as e:
            raise ShardError(f"{tar}: the tar is damaged ({e})") from None
    return samples, sha256_file(tar), tar.stat().st_size


def _image_size(data: bytes):
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - an unreadable header is reported, not raised
        return None


def index_foreign(src, out=None, progress: bool = True, command: list | None = None) -> IndexResult:
    """Write DALI index files and a manifest for foreign WebDataset tars (see the module doc)."""
    tars = find_tars(src)
    out = Path(out) if out is not None else tars[0].parent
    if (out / MANIFEST_NAME).is_file():
        import json
        try:
            kind = json.loads((out / MANIFEST_NAME).read_text()).get("kind")
        except (ValueError, AttributeError):
            kind = None
        if kind != KIND:
            raise ShardError(f"{out / MANIFEST_NAME}: already the manifest of a shard set (kind {kind!r}); "
                             "clvr shard index only replaces what it wrote (use --out DIR for a side folder)")
    out.mkdir(parents=True, exist_ok=True)
    dirs = {t.resolve().parent for t in tars}
    if len(dirs) != 1:
        raise ShardError(f"the tars lie in {len(dirs)} folders ({', '.join(map(str, sorted(dirs)))}); "
                         "index one folder at a time")
    tar_dir = dirs.pop()
    names = [t.stem for t in tars]
    if len(set(names)) != len(names):
        raise ShardError("two tars have the same name; their index files would collide")
    result = IndexResult(out)
    sizes, components, labels = Counter(), Counter(), Counter()
    records, unlabelled, cls_values = [], 0, []
    undecodable = []
    from .progress import Progress
    bar = Progress(len(tars), "index tars", enabled=progress)
    try:
        for tar in tars:
            samples, sha, nbytes = _scan(tar, result.unknown)
            kept = []
            for key, comps, small in samples:
                exts = {c.ext for c in comps}
                if not exts & {*FOREIGN_IMAGE_EXTS, *VIDEO_EXTS}:
                    result.skipped.append({"shard": str(tar), "key": key,
                                           "reason": "no image or video (has: " + ", ".join(sorted(exts)) + ")"})
                    continue
                image = next((small[e] for e in FOREIGN_IMAGE_EXTS if e in small), None)
                if image is not None:
                    size = _image_size(image)
                    if size is None:
                        undecodable.append(f"{tar}: key {key}")
                    else:
                        sizes[bucket(*size)] += 1
                if CLS_EXT in small:
                    text = small[CLS_EXT].decode("ascii", "replace").strip()
                    try:
                        cls_values.append(int(text))
                    except ValueError:
                        raise ShardError(f"{tar}: key {key}: .cls is {text[:40]!r}, not a class id "
                                         "(ASCII decimal)") from None
                else:
                    unlabelled += 1
                components.update(exts)
                kept.append(comps)
            index_name = tar.stem + ".idx"
            if kept:
                write_atomic(out / index_name, format_index(kept).encode())
                records.append({"name": tar.name, "index": index_name, "samples": len(kept), "bytes": nbytes,
                                "sha256": sha, "first_index": result.samples})
                result.samples += len(kept)
            bar.update()
    finally:
        bar.close()
    if not records:
        raise ShardError(f"{tar_dir}: no sample with an image or video in {len(tars)} tar(s)")
    if undecodable:
        raise ShardError(f"{len(undecodable)} image(s) whose header cannot be read, e.g. {undecodable[0]}; "
                         "re-shard them with 'clvr shard images', which converts or rejects each")
    classes = None
    if cls_values and not unlabelled:
        distinct = sorted(set(cls_values))
        names_ = [str(v) for v in distinct]
        classes = {"names": names_, "ids": {n: i for i, n in enumerate(names_)}}
        labels.update(str(classes["ids"][str(v)]) for v in cls_values)
        result.classes = names_
    result.shards = len(records)
    try:
        rel = os.path.relpath(tar_dir, out.resolve())
    except ValueError:       # another drive (Windows)
        rel = str(tar_dir)
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": KIND, "split": None,
        "tar_dir": rel, "shards": records,
        "totals": {"samples": result.samples, "shards": len(records), "bytes": sum(r["bytes"] for r in records)},
        "classes": classes, "categories": None, "label_source": CLS_EXT if classes else None,
        "label_counts": dict(sorted(labels.items(), key=lambda kv: int(kv[0]))),
        "components": dict(sorted(components.items())), "stats": dict(sorted(sizes.items())),
        "skipped": {"count": len(result.skipped), "samples": result.skipped[:1000]},
        "unknown_extensions": dict(sorted(result.unknown.items())),
        "index_from": "order",
        "command": list(command or []), "seed": None,
    }
    from clvr import __version__
    manifest["clvr_version"] = __version__
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return result

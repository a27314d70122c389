"""Listing image inputs: an ImageFolder tree, a flat folder, or a CSV / JSONL file list.

* ImageFolder: ``SRC/<class>/**/<image>``; classes are the sub-folder names, sorted.
* Flat folder: ``SRC/**/<image>`` with no class sub-folders; no labels.
* CSV: ``path[,label]`` rows (a header row ``path,label`` is allowed); JSONL: ``{"path": ..,
  "label": ..}`` per line. Paths are relative to the list's folder. Labels are class names;
  when every label is an integer they sort numerically.

Files are listed in sorted order, so the same tree always gives the same list. Every image
is named by its path relative to SRC (or to the list's folder), so shards do not depend on
where the data is mounted.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .boxes import check_box
from .errors import ShardError
from .fileio import read_input, text_lines
from .format import BOXCLS_EXT, BOXES_EXT, PROPOSAL_CATEGORY, encode_boxes
from .images import prepare_image
from .job import Item, Prepared, SourceFile

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm",
                  ".pnm", ".jfif"}


def _walk(root: Path, suffixes, rel_to: Path) -> tuple[list[str], list[str], list[tuple]]:
    """(files with one of ``suffixes``, other files, notes on unreadable folders), the files as
    sorted POSIX paths relative to ``rel_to``; hidden files and folders are skipped. Symbolic
    links are followed, each folder once, so a link back up the tree cannot make the walk endless."""
    found, other, unreadable = [], [], []
    base = len(str(rel_to).rstrip(os.sep)) + 1
    seen = set()

    def on_error(e: OSError) -> None:
        rel = os.path.relpath(e.filename, rel_to) if e.filename else str(root)
        unreadable.append((rel.replace(os.sep, "/"), "sample", "rejected",
                           f"folder cannot be read ({e.strerror}); its files are not sharded"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_error):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = dirpath[base:].replace(os.sep, "/")
        prefix = rel_dir + "/" if rel_dir else ""
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            (found if os.path.splitext(f)[1].lower() in suffixes else other).append(prefix + f)
    return found, other, unreadable


def _not_a(what: str, rel: str) -> tuple[str, str, str, str]:
    ext = os.path.splitext(rel)[1] or "none"
    return (rel, "sample", "rejected", f"not a{'n' if what[0] in 'aeiou' else ''} {what} file (extension {ext})")


def _as_int(name: str) -> int | None:
    try:
        return int(name)
    except ValueError:
        return None


def class_order(names) -> list[str]:
    """Class names in id order: numerically when every name is an integer ("2" before "10"; "01"
    and "1" stay distinct, in a fixed order), otherwise alphabetically."""
    names = set(names)
    if names and all(_as_int(n) is not None for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def list_folder(root: Path, suffixes=IMAGE_SUFFIXES, what="image"):
    """Return (items, class names or None, notes). ``notes`` are listing-level log entries."""
    root = Path(root)
    if not root.is_dir():
        raise ShardError(f"{root}: not a folder")
    notes = []
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs:
        classes = class_order(d.name for d in subdirs)
        ids = {c: i for i, c in enumerate(classes)}
        items = []
        for c in classes:
            found, other, unreadable = _walk(root / c, suffixes, root)
            items += [Item(rel, ids[c]) for rel in found]
            notes += [_not_a(what, rel) for rel in other] + unreadable
        loose = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        notes += [(p.name, "sample", "rejected", "file outside any class folder") for p in loose]
        items.sort(key=lambda it: (it.label, it.src))
        return items, classes, notes
    found, other, unreadable = _walk(root, suffixes, root)
    notes += [_not_a(what, rel) for rel in other] + unreadable
    return [Item(rel) for rel in found], None, notes


def _labelled(rows: list[tuple[str, str | None]], where: str):
    """Items from (path, label) rows: every row labelled, or none."""
    labelled = [r for r in rows if r[1] not in (None, "")]
    if labelled and len(labelled) != len(rows):
        raise ShardError(f"{where}: {len(rows) - len(labelled)} rows have no label while others do; "
                         "label every row or none")
    if not labelled:
        return [Item(p) for p, _ in rows], None
    classes = class_order(str(lab) for _, lab in rows)
    ids = {c: i for i, c in enumerate(classes)}
    return [Item(p, ids[str(lab)]) for p, lab in rows], classes


def list_file(path: Path):
    """Items from a CSV or JSONL list. Returns (items, classes, root folder of the paths, notes)."""
    path = Path(path)
    rows, notes = [], []
    try:
        lines = text_lines(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: no such file") from None
    good = []
    for lineno, line in lines:
        if line is None:
            notes.append((f"{path.name}:{lineno}", "line", "rejected", "not UTF-8 text"))
        else:
            good.append((lineno, line))
    if path.suffix.lower() == ".csv":
        for lineno, line in good:
            row = next(csv.reader([line]), [])
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
                continue
            if len(row) > 2:
                notes.append((f"{path.name}:{lineno}", "line", "rejected",
                              f"expected 'path[,label]', got {len(row)} columns"))
                continue
            rows.append((lineno, row[0].strip(), row[1].strip() if len(row) > 1 else None))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for lineno, line in good:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                p = obj.get("path") or obj.get("image") or obj.get("file")
                if not isinstance(p, str) or not p:
                    raise ValueError("no 'path' field")
            except (ValueError, AttributeError) as e:
                notes.append((f"{path.name}:{lineno}", "line", "rejected", f"invalid line: {e}"))
                continue
            lab = obj.get("label")
            rows.append((lineno, p, None if lab is None else str(lab)))
    else:
        raise ShardError(f"{path}: a file list must be .csv or .jsonl")
    first: dict[str, int] = {}
    unique = []
    for lineno, p, lab in rows:  # one image listed twice could land in both train and val
        key = os.path.normpath(p)
        if key in first:
            notes.append((f"{path.name}:{lineno}", "line", "rejected", f"lists {p} again (first on line {first[key]})"))
        else:
            first[key] = lineno
            unique.append((p, lab))
    if not unique:
        raise ShardError(f"{path}: lists no images")
    items, classes = _labelled(unique, str(path))
    return items, classes, path.parent, notes


class PrepareImageFile:
    """``prepare`` for ``clvr shard images``: read ``root/item.src``, check it, add proposals."""

    def __init__(self, root, options, proposals: str | None = None, max_proposals: int = 16):
        self.root = str(root)
        self.options = options
        self.proposals = proposals
        self.max_proposals = max_proposals

    def input_path(self, item: Item) -> str:
        return os.path.join(self.root, item.src)

    def __call__(self, item: Item):
        path = self.input_path(item)
        data = read_input(path)
        img = prepare_image(data, self.options, need_pixels=self.proposals is not None)
        meta = {"width": img.width, "height": img.height, "source_format": img.source_format}
        if img.source_size != (img.width, img.height):
            meta["source_size"] = list(img.source_size)
        comps = {img.ext: SourceFile(path) if img.data is data else img.data}
        notes = [("sample", "converted", n) for n in img.notes]
        if self.proposals:
            from .proposals import felzenszwalb_boxes

            boxes = []
            for b in felzenszwalb_boxes(img.pixels, max_boxes=self.max_proposals):
                clipped, _ = check_box(b, img.width, img.height)
                if clipped is not None:
                    boxes.append({"bbox": [round(v, 2) for v in clipped], "category": PROPOSAL_CATEGORY})
            comps[BOXES_EXT], comps[BOXCLS_EXT] = encode_boxes(boxes)
            meta["boxes"] = boxes
            meta["box_source"] = self.proposals
        return Prepared(comps, meta, notes)

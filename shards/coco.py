"""``clvr shard coco``: COCO detection annotations -> images with their boxes and categories.

COCO category ids are sparse (1..90 for COCO itself); shards use contiguous ids 0..C-1 in the
order of the COCO ids, and the manifest's ``categories`` maps each to its COCO id and name.
Boxes are checked against the decoded image (not only the JSON's width/height): degenerate
boxes and boxes outside the image are rejected, boxes partly outside are clipped, each logged.
Crowd annotations (``iscrowd: 1``) stay in the JSON metadata, flagged, but are left out of the
``boxes.f32`` component unless ``--keep-crowd``: they mark regions, not objects.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from pathlib import Path

from .boxes import check_box, scale_box
from .errors import ShardError
from .fileio import read_input
from .format import BOXCLS_EXT, BOXES_EXT, encode_boxes
from .images import prepare_image
from .job import Item, Prepared


def load_coco(instances: Path):
    """Return (items, categories, notes) from a COCO instances JSON."""
    instances = Path(instances)
    try:
        data = json.loads(instances.read_text())
    except FileNotFoundError:
        raise ShardError(f"{instances}: no such file") from None
    except OSError as e:
        raise ShardError(f"{instances}: cannot be read ({e.strerror})") from None
    except (ValueError, RecursionError) as e:
        raise ShardError(f"{instances}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ShardError(f"{instances}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ShardError(f"{instances}: no '{key}' list; is this a COCO instances file?")
    categories, contiguous = _categories(instances, data["categories"])
    images, notes, files = {}, [], {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not _is_id(im.get("id")) or not isinstance(im.get("file_name"), str):
            notes.append((f"images[{k}]", "sample", "rejected",
                          "image entry needs an 'id' (integer or string) and a 'file_name' (string)"))
        elif im["id"] in images:
            notes.append((im["file_name"], "sample", "rejected",
                          f"image id {im['id']!r} is listed twice (first for {images[im['id']]['file_name']})"))
        elif os.path.normpath(im["file_name"]) in files:  # it could land in both train and val
            notes.append((im["file_name"], "sample", "rejected",
                          f"file listed again as image id {im['id']!r} (first as {files[os.path.normpath(im['file_name'])]!r})"))
        else:
            images[im["id"]] = im
            files[os.path.normpath(im["file_name"])] = im["id"]
    anns = defaultdict(list)
    for k, a in enumerate(data["annotations"]):
        where = f"annotation {a.get('id')!r}" if isinstance(a, dict) else f"annotations[{k}]"
        if not isinstance(a, dict) or not _is_id(a.get("image_id")) or a["image_id"] not in images:
            image_id = a.get("image_id") if isinstance(a, dict) else None
            notes.append((where, "box", "rejected", f"refers to unknown image_id {image_id!r}"))
            continue
        file_name = images[a["image_id"]]["file_name"]
        if not _is_id(a.get("category_id")) or a["category_id"] not in contiguous:
            notes.append((file_name, "box", "rejected", f"{where}: unknown category_id {a.get('category_id')!r}"))
            continue
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1):  # True and False compare equal to 1 and 0
            notes.append((file_name, "box", "rejected", f"{where}: iscrowd must be 0 or 1, not {crowd!r}"))
            continue
        anns[a["image_id"]].append({"id": a.get("id"), "bbox": a.get("bbox"),
                                    "category": contiguous[a["category_id"]],
                                    "coco_category_id": a["category_id"], "iscrowd": int(crowd)})
    items = [Item(images[i]["file_name"], extra={"image_id": i, "anns": anns[i]})
             for i in sorted(images, key=_id_order)]
    if not items:
        raise ShardError(f"{instances}: lists no usable images")
    return items, categories, notes


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _id_order(value):
    """Ids may be integers or strings (even mixed): integers first, each kind in its own order."""
    return (isinstance(value, str), value if isinstance(value, int) else 0, str(value))


def _categories(instances: Path, entries: list):
    """COCO categories -> (the manifest's list with contiguous ids, coco id -> contiguous id)."""
    seen = {}
    for k, c in enumerate(entries):
        if not isinstance(c, dict) or not _is_id(c.get("id")):
            raise ShardError(f"{instances}: categories[{k}] needs an 'id' (integer or string)")
        if c["id"] in seen:
            raise ShardError(f"{instances}: category id {c['id']!r} is listed twice")
        seen[c["id"]] = c
    ordered = sorted(seen, key=_id_order)
    categories = [{"id": i, "coco_id": cid, "name": str(seen[cid].get("name", cid))} for i, cid in enumerate(ordered)]
    return categories, {cid: i for i, cid in enumerate(ordered)}


class PrepareCocoImage:
    def __init__(self, images_dir, options, keep_crowd: bool = False):
        self.images_dir = str(images_dir)
        # COCO boxes refer to the stored pixel grid, so an EXIF rotation is reset, not applied.
        self.options = dataclasses.replace(options, orientation="reset")
        self.keep_crowd = keep_crowd

    def input_path(self, item: Item) -> str:
        return os.path.join(self.images_dir, item.src)

    def __call__(self, item: Item) -> Prepared:
        data = read_input(self.input_path(item), "image file")
        img = prepare_image(data, self.options)
        notes = [("sample", "converted", n) for n in img.notes]
        sx, sy = img.scale
        sw, sh = img.source_size
        kept, meta_boxes = [], []
        for a in item.extra["anns"]:
            where = f"annotation {a['id']}"
            clipped, note = check_box(a["bbox"], sw, sh)
            if clipped is None:
                notes.append(("box", "rejected", f"{where}: {note}"))
                continue
            if note:
                notes.append(("box", "converted", f"{where}: {note}"))
            box = [round(v, 3) for v in scale_box(clipped, sx, sy)]
            entry = {"bbox": box, "category": a["category"], "coco_category_id": a["coco_category_id"],
                     "ann_id": a["id"], "iscrowd": a["iscrowd"]}
            meta_boxes.append(entry)
            if self.keep_crowd or not a["iscrowd"]:
                kept.append(entry)
        comps = {img.ext: img.data}
        comps[BOXES_EXT], comps[BOXCLS_EXT] = encode_boxes(kept)
        meta = {"width": img.width, "height": img.height, "image_id": item.extra["image_id"],
                "boxes": meta_boxes, "box_source": "coco"}
        return Prepared(comps, meta, notes)

"""``clvr shard preview``: a contact sheet (PNG) of samples from a shard set.

Each tile shows one sample: the image (boxes drawn, with their categories), or for a video a
strip of frames, with the sample's index, label and caption underneath. Looking at a sheet
is the fastest way to see that a dataset was sharded as intended.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .format import BOXCLS_EXT, BOXES_EXT, IMAGE_EXTS, META_EXT, TEXT_EXT, VIDEO_EXTS, decode_boxes, decode_int64
from .manifest import shard_sets

TILE = 128
CAPTION_LINES = 3
LINE = 12  # px per text line
BOX_COLOUR = (255, 0, 255)


def _samples(directory: Path, manifest: dict, count: int, seed: int):
    """``count`` samples drawn at random (seeded) from the set: dicts of ext -> bytes."""
    total = manifest["totals"]["samples"]
    wanted = sorted(random.Random(seed).sample(range(total), min(count, total)))
    out, first = [], 0
    for s in manifest["shards"]:
        mine = [w - first for w in wanted if first <= w < first + s["samples"]]
        first += s["samples"]
        if not mine:
            continue
        with tarfile.open(directory / s["name"]) as tf:
            current, n, keep = None, -1, set(mine)
            sample: dict = {}
            for member in tf:
                key, _, ext = member.name.partition(".")
                if key != current:
                    if n in keep:
                        out.append(sample)
                    current, n, sample = key, n + 1, {}
                if n in keep:
                    sample[ext] = tf.extractfile(member).read()
            if n in keep:
                out.append(sample)
    return out


def _video_strip(data: bytes, frames: int = 4) -> Image.Image:
    import av

    with av.open(io.BytesIO(data)) as c:
        decoded = [f.to_image() for f in c.decode(video=0)]
    picks = [decoded[round(i * (len(decoded) - 1) / max(frames - 1, 1))] for i in range(frames)]
    w, h = picks[0].size
    strip = Image.new("RGB", (w * frames, h))
    for i, im in enumerate(picks):
        strip.paste(im.convert("RGB"), (i * w, 0))
    return strip


def _tile(sample: dict, classes, categories, font) -> Image.Image:
    image, is_video = None, False
    for ext in IMAGE_EXTS:
        if ext in sample:
            image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
    for ext in VIDEO_EXTS:
        if ext in sample:
            image, is_video = _video_strip(sample[ext]), True
    if image is None:
        image = Image.new("RGB", (TILE, TILE), (80, 80, 80))
    scale = (2 * TILE) / image.width if is_video else TILE / max(image.size)
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if max(image.size) < TILE else Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(shown)
    if BOXES_EXT in sample and BOXCLS_EXT in sample:
        names = {c["id"]: c["name"] for c in categories or []}
        for (x, y, w, h), cat in decode_boxes(sample[BOXES_EXT], sample[BOXCLS_EXT]):
            box = [x * scale, y * scale, (x + w) * scale, (y + h) * scale]
            draw.rectangle(box, outline=BOX_COLOUR, width=1)
            if cat >= 0:
                draw.text((box[0] + 1, box[1]), names.get(cat, str(cat)), fill=BOX_COLOUR, font=font)
    index = decode_int64(sample["index.i64"]) if "index.i64" in sample else "?"
    label = decode_int64(sample["label.i64"]) if "label.i64" in sample else -1
    name = classes[label] if classes and 0 <= label < len(classes) else ("-" if label < 0 else str(label))
    text = [f"#{index}  label {name}"]
    if TEXT_EXT in sample:
        text += textwrap.wrap(sample[TEXT_EXT].decode("utf-8").split("\n")[0], 21)[:CAPTION_LINES]
    elif META_EXT in sample and "src" in (meta := json.loads(sample[META_EXT])):
        text.append(str(meta["src"])[-21:])
    width = max(shown.width, TILE)
    tile = Image.new("RGB", (width + 4, shown.height + 8 + LINE * (CAPTION_LINES + 1)), (255, 255, 255))
    tile.paste(shown, (2, 2))
    d = ImageDraw.Draw(tile)
    for i, line in enumerate(text):
        d.text((2, shown.height + 4 + LINE * i), line, fill=(0, 0, 0), font=font)
    return tile


def preview(out, dest, count: int = 24, columns: int = 8, seed: int = 0, split: str | None = None) -> Path:
    sets = shard_sets(out)
    if split is not None:
        if split not in sets:
            raise ValueError(f"{out}: no split {split!r} (has {', '.join(map(str, sets))})")
        sets = {split: sets[split]}
    name, (directory, manifest) = next(iter(sets.items()))
    if manifest["totals"]["samples"] == 0:
        raise ValueError(f"{directory}: holds no samples")
    font = ImageFont.load_default()
    classes = (manifest.get("classes") or {}).get("names")
    tiles = [_tile(s, classes, manifest.get("categories"), font)
             for s in _samples(directory, manifest, count, seed)]
    columns = min(columns, len(tiles))
    if any(t.width > TILE + 4 for t in tiles):
        columns = max(1, columns // 2)
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * tw, rows * th + 16), (255, 255, 255))
    ImageDraw.Draw(sheet).text((4, 2), f"{directory} ({manifest['kind']}, {manifest['totals']['samples']} samples)",
                               fill=(0, 0, 0), font=font)
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * tw, 16 + (i // columns) * th))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)
    return dest

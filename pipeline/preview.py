"""``clvr views preview``: a labelled PNG of exactly what a model will see.

:func:`preview` builds a :class:`~clvr.pipeline.loader.ViewLoader` (shuffle on, the given seed),
takes its first batch and hands it to :func:`render`, which lays the views out as a sheet:

- ``two_view``, ``multi_crop``, ``image_text``: one row per sample, its views side by side,
  each labelled with its view name and size; ``image_text`` adds the caption under the view.
  Every view of a sheet is drawn at the same zoom, so a 96-px local crop next to a 224-px global
  crop keeps its relative size (it is not stretched, and it is not padded);
- ``cpc_grid``: the G x G patches of each sample in their grid positions, a small gap between them;
- ``jigsaw``: the full-image view, then the nine patches in a 3 x 3 layout in the order the
  model gets them, labelled with the permutation id and the cells it takes them from;
- ``object_crops``: the sample's source image (read from its shard) with every box in thin grey
  and each chosen (jittered) box in its own colour and number, next to the K x 2 crops framed in
  the same colours; masked objects are greyed and crossed;
- ``video_clips``: each clip as a strip of its T frames, the rho strips of a sample one under the
  other, labelled with the source frame numbers;
- any other (plug-in) generator: every view tensor shaped ``(B, ..., 3, H, W)``, flattened,
  labelled by name and position.

Views come out of the loader normalised; they are mapped back to pixels with the mean and std
of the recipe that made them (uint8 views are shown as they are) and clipped to 0-255. A view
region of the sheet holds exactly those pixels, enlarged by the integer ``zoom`` (nearest
neighbour). The PNG records where every view is in a text chunk ``clvr:layout`` (JSON: title,
zoom, and one ``{"sample", "index", "view", "box": [x0, y0, x1, y1]}`` per view region).

Only PIL and numpy draw; torch and DALI are needed only to run the loader.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

LAYOUT_KEY = "clvr:layout"
TARGET = 96            # the auto zoom makes the largest unit of a sample at least this many px
MAX_ZOOM = 8
GAP = 6                # px between the views of a row
PATCH_GAP = 2          # px between patches of a grid, frames of a strip
PAD = 4
LABEL_WIDTH = 64
CAPTION_WIDTH = 150    # the least width of a block's caption (text wraps to it)
MIN_WIDTH = 480
BG = (255, 255, 255)
INK = (0, 0, 0)
FAINT = (150, 150, 150)
RULE = (205, 205, 205)
EDGE = (180, 180, 180)
MASKED = (128, 128, 128)
CROSS = (220, 0, 0)
COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128), (170, 110, 40)]


# ----------------------------------------------------------------------------- pixels

def _numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):                         # a torch tensor, possibly on a GPU
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def to_pixels(view, recipe=None) -> np.ndarray:
    """Views ``(..., 3, H, W)`` -> ``(..., H, W, 3)`` uint8 for display.

    Float views are de-normalised with ``recipe.normalize`` (the loader's ``x / 255 - mean) / std``
    undone), rounded and clipped to 0-255; uint8 views are shown as they are.
    """
    a = _numpy(view)
    if a.ndim < 3 or a.shape[-3] != 3:
        raise ValueError(f"not an image tensor (..., 3, H, W): shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        out = a
    else:
        a = a.astype(np.float32)
        if recipe is not None:
            mean = np.asarray(recipe.normalize.mean, np.float32).reshape(3, 1, 1) * 255.0
            std = np.asarray(recipe.normalize.std, np.float32).reshape(3, 1, 1) * 255.0
            a = a * std + mean
        out = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, -3, -1))


# ----------------------------------------------------------------------------- layout

@dataclass
class Part:
    """A rectangle of the sheet: its pixels and the view regions inside it (relative boxes)."""
    image: Image.Image
    regions: list = field(default_factory=list)     # dicts with "view" and "box"

    @property
    def size(self):
        return self.image.size


def _font():
    return ImageFont.load_default()


def _line_height(font) -> int:
    box = font.getbbox("Ag|")
    return box[3] - min(box[1], 0) + 3


def _text_width(text: str, font) -> int:
    return int(math.ceil(font.getlength(text))) if hasattr(font, "getlength") else 6 * len(text)


def _wrap(text: str, width: int, font, max_lines: int | None = None) -> list[str]:
    """``text`` wrapped at spaces to ``width`` px (a word longer than that is cut); the last kept
    line ends with '...' when lines are left out."""
    fits = lambda s: _text_width(s, font) <= width   # noqa: E731
    lines = []
    for para in str(text).splitlines() or [""]:
        line = ""
        for word in para.split(" "):
            while word and not fits(word):            # a word wider than the line: cut it
                n = max(1, max(k for k in range(1, len(word) + 1) if fits(word[:k]) or k == 1))
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:n])
                word = word[n:]
            candidate = f"{line} {word}" if line else word
            if fits(candidate):
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and not fits(last + "..."):
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def text_part(lines, font, width: int | None = None, colour=INK) -> Part:
    lines = list(lines)
    lh = _line_height(font)
    w = width if width is not None else max([_text_width(s, font) for s in lines] + [1]) + 2
    im = Image.new("RGB", (max(1, w), max(1, lh * len(lines) + 2)), BG)
    d = ImageDraw.Draw(im)
    for i, s in enumerate(lines):
        d.text((1, 1 + i * lh), s, fill=colour, font=font)
    return Part(im)


def pixels_part(pixels: np.ndarray, zoom: int, view: str | None = None) -> Part:
    """A view's pixels enlarged ``zoom`` times, in a 1-px frame (so pale views keep their edges)."""
    im = Image.fromarray(pixels, "RGB")
    if zoom > 1:
        im = im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST)
    regions = [{"view": view, "box": [0, 0, im.width, im.height]}] if view is not None else []
    return framed(Part(im, regions), EDGE, 1)


def _stack(parts, gap: int, horizontal: bool, fill=BG) -> Part:
    parts = [p for p in parts if p is not None]
    if not parts:
        return Part(Image.new("RGB", (1, 1), fill))
    if horizontal:
        w = sum(p.size[0] for p in parts) + gap * (len(parts) - 1)
        h = max(p.size[1] for p in parts)
    else:
        w = max(p.size[0] for p in parts)
        h = sum(p.size[1] for p in parts) + gap * (len(parts) - 1)
    im = Image.new("RGB", (w, h), fill)
    regions, pos = [], 0
    for p in parts:
        x, y = (pos, 0) if horizontal else (0, pos)
        im.paste(p.image, (x, y))
        for r in p.regions:
            b = r["box"]
            regions.append({**r, "box": [b[0] + x, b[1] + y, b[2] + x, b[3] + y]})
        pos += (p.size[0] if horizontal else p.size[1]) + gap
    return Part(im, regions)


def hstack(parts, gap: int = GAP, fill=BG) -> Part:
    return _stack(parts, gap, True, fill)


def vstack(parts, gap: int = 0, fill=BG) -> Part:
    return _stack(parts, gap, False, fill)


def grid(cells: list[list[Part]], gap: int = PATCH_GAP, fill=BG) -> Part:
    """Rows of parts, each cell placed at (column x cell width, row x cell height)."""
    cw = max(c.size[0] for row in cells for c in row)
    ch = max(c.size[1] for row in cells for c in row)
    cols = max(len(row) for row in cells)
    im = Image.new("RGB", (cols * cw + (cols - 1) * gap, len(cells) * ch + (len(cells) - 1) * gap), fill)
    regions = []
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            x, y = j * (cw + gap), i * (ch + gap)
            im.paste(c.image, (x, y))
            regions += [{**r, "box": [r["box"][0] + x, r["box"][1] + y, r["box"][2] + x, r["box"][3] + y]}
                        for r in c.regions]
    return Part(im, regions)


def labelled(part: Part, lines, font, min_width: int = 0, colour=INK) -> Part:
    """``part`` with text lines under it (wrapped to the part's width, or ``min_width``)."""
    width = max(part.size[0], min_width)
    wrapped = [w for s in lines for w in _wrap(s, width, font)]
    return vstack([part, text_part(wrapped, font, width, colour)], gap=2)


def framed(part: Part, colour, width: int = 2) -> Part:
    """``part`` inside a border of ``colour`` (outside its view regions)."""
    w, h = part.size
    im = Image.new("RGB", (w + 2 * width, h + 2 * width), colour)
    im.paste(part.image, (width, width))
    regions = [{**r, "box": [r["box"][0] + width, r["box"][1] + width, r["box"][2] + width, r["box"][3] + width]}
               for r in part.regions]
    return Part(im, regions)


# ----------------------------------------------------------------------------- generators

class _Recipes:
    """``recipe(i)`` as the loader's context gives it (the last recipe repeats)."""

    def __init__(self, recipes):
        self.recipes = list(recipes) if recipes else []

    def recipe(self, i: int):
        if not self.recipes:
            return None
        return self.recipes[min(i, len(self.recipes) - 1)]


def _kind(generator) -> str:
    """Which layout: the built-in class (or a subclass of it), else ``generic``."""
    from .views.cpc_grid import CpcGrid
    from .views.image_text import ImageText
    from .views.jigsaw import Jigsaw
    from .views.multi_crop import MultiCrop
    from .views.object_crops import ObjectCrops
    from .views.two_view import TwoView
    from .views.video_clips import VideoClips
    for cls, kind in ((TwoView, "side"), (MultiCrop, "multi"), (ImageText, "text"), (CpcGrid, "cpc"),
                      (Jigsaw, "jigsaw"), (ObjectCrops, "objects"), (VideoClips, "video")):
        if isinstance(generator, cls):
            return kind
    return "generic"


def _shape(t) -> tuple:
    return tuple(int(s) for s in t.shape)


def _fits(kind: str, batch) -> bool:
    """Whether the batch has the structure the built-in layout expects (a subclass may differ)."""
    v = [_shape(t) for t in batch.views]
    image = lambda s: len(s) == 4 and s[1] == 3   # noqa: E731
    if kind in ("side", "multi", "text"):
        return bool(v) and all(image(s) for s in v)
    if kind == "cpc":
        return len(v) == 1 and len(v[0]) == 6 and v[0][3] == 3
    if kind == "jigsaw":
        return len(v) == 2 and image(v[0]) and len(v[1]) == 5 and v[1][1] == 9 and v[1][2] == 3
    if kind == "objects":
        return len(v) == 1 and len(v[0]) == 6 and v[0][2] == 2 and v[0][3] == 3
    if kind == "video":
        return len(v) == 1 and len(v[0]) == 6 and v[0][3] == 3
    return True


def _auto_zoom(kind: str, batch, sources) -> int:
    v = [_shape(t) for t in batch.views]
    if kind == "cpc":
        g, p = max(v[0][1], v[0][2]), v[0][-1]
        unit = g * p
    elif kind == "jigsaw":
        unit = max(v[0][-1], v[0][-2], 3 * v[1][-1])
    elif kind == "objects":    # boxes on the source image need room for their numbers
        unit = max([v[0][-1]] + [max(s.shape[:2]) for s in (sources or {}).values() if s is not None]) / 2
    else:
        unit = max([max(s[-1], s[-2]) for s in v if len(s) >= 4 and s[-3] == 3] or [TARGET])
    return int(min(MAX_ZOOM, max(1, math.ceil(TARGET / max(1, unit)))))


def _side_by_side(b, batch, rs, kind, zoom, font, generator):
    parts = []
    for i, (name, t) in enumerate(zip(batch.names, batch.views)):
        recipe = rs.recipe(i)
        if kind == "multi":
            g = generator.options.global_views
            recipe = rs.recipe(i if i < g else i - g)
        px = to_pixels(t[b], recipe)
        tile = pixels_part(px, zoom, name)
        lines = [f"{name}  {px.shape[1]}x{px.shape[0]}"]
        if kind == "text":
            caption = batch.text[b] if batch.text is not None else ""
            width = max(tile.size[0], 180)
            text = _wrap(f'"{caption}"', width, font, max_lines=6)
            parts.append(vstack([labelled(tile, lines, font), text_part(text, font, width)], gap=2))
        else:
            parts.append(labelled(tile, lines, font))
    return parts


def _cpc(b, batch, rs, zoom, font, generator):
    patches = batch.views[0][b]                       # (G, G, 3, P, P)
    g1, g2, _, p, _ = _shape(patches)
    px = to_pixels(patches, rs.recipe(0))             # (G, G, P, P, 3)
    cells = [[pixels_part(px[i, j], zoom, f"patches[{i},{j}]") for j in range(g2)] for i in range(g1)]
    o = generator.options
    lines = [f"patches: {g1}x{g2} grid of {p}px", f"stride {o.stride}, side {o.side}"]
    return [labelled(grid(cells, max(PATCH_GAP, zoom)), lines, font, CAPTION_WIDTH)]


def _jigsaw(b, batch, rs, zoom, font, generator):
    recipe = rs.recipe(0)
    full = to_pixels(batch.views[0][b], recipe)
    image = labelled(pixels_part(full, zoom, batch.names[0]), [f"{batch.names[0]}  {full.shape[1]}x{full.shape[0]}"],
                     font)
    px = to_pixels(batch.views[1][b], recipe)         # (9, P, P, 3)
    cells = [[pixels_part(px[3 * i + j], zoom, f"{batch.names[1]}[{3 * i + j}]") for j in range(3)]
             for i in range(3)]
    lines = [f"{batch.names[1]}: 9 x {px.shape[1]}px"]
    if "perm" in batch.extras:
        pid = int(_numpy(batch.extras["perm"][b]))
        lines.append(f"permutation {pid}")
        perms = getattr(generator, "perms", None)
        if perms is not None and 0 <= pid < len(perms):
            lines.append("from cells " + " ".join(str(int(c)) for c in _numpy(perms[pid])))
    return [image, labelled(grid(cells, max(PATCH_GAP, zoom)), lines, font, CAPTION_WIDTH)]


def _grey(px: np.ndarray) -> np.ndarray:
    return ((px.astype(np.uint16) + np.array(MASKED, np.uint16)) // 2).astype(np.uint8)


def _cross(part: Part) -> Part:
    im = part.image.copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    d.line([(0, 0), (w - 1, h - 1)], fill=CROSS, width=2)
    d.line([(0, h - 1), (w - 1, 0)], fill=CROSS, width=2)
    return Part(im, part.regions)


def _category(c: int, categories) -> str:
    if c < 0:
        return "none"
    if categories:
        for cat in categories:
            if isinstance(cat, dict) and cat.get("id") == c:
                return str(cat.get("name", c))
        if all(isinstance(x, str) for x in categories) and c < len(categories):
            return categories[c]
    return str(c)


def _objects(b, batch, rs, zoom, font, generator, source, categories):
    objs = batch.views[0][b]                          # (K, 2, 3, S, S)
    k = _shape(objs)[0]
    mask = _numpy(batch.extras["mask"][b]).astype(bool) if "mask" in batch.extras else np.ones(k, bool)
    cats = _numpy(batch.extras["category"][b]) if "category" in batch.extras else np.full(k, -1)
    boxes = _numpy(batch.extras["box"][b]) if "box" in batch.extras else None
    columns = []
    for j in range(k):
        colour = COLOURS[j % len(COLOURS)] if mask[j] else MASKED
        pair = []
        for v in range(2):
            px = to_pixels(objs[j, v], rs.recipe(v))
            if not mask[j]:
                px = _grey(px)
            tile = pixels_part(px, zoom, f"objects[{j},{v}]")
            pair.append(_cross(tile) if not mask[j] else tile)
        col = framed(vstack(pair, gap=PATCH_GAP, fill=colour), colour)
        lines = [f"{j}: cat {_category(int(cats[j]), categories)}"] + ([] if mask[j] else ["masked"])
        columns.append(labelled(col, lines, font))
    crops = hstack(columns, gap=GAP)
    src = _source_part(b, batch, source, zoom, font, boxes, mask)
    return [src, crops]


def _source_part(b, batch, source, zoom, font, boxes, mask) -> Part:
    if source is None:
        return text_part(["(source image", "not available)"], font)
    im = Image.fromarray(source, "RGB")
    if zoom > 1:
        im = im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST)
    d = ImageDraw.Draw(im)
    if batch.boxes is not None:
        for x, y, w, h in _numpy(batch.boxes[b]).reshape(-1, 4).tolist():
            d.rectangle([x * zoom, y * zoom, (x + w) * zoom - 1, (y + h) * zoom - 1], outline=FAINT, width=1)
    if boxes is not None:
        rects = [[x * zoom, y * zoom, (x + w) * zoom - 1, (y + h) * zoom - 1]
                 for x, y, w, h in boxes.reshape(-1, 4).tolist()]
        for j, r in enumerate(rects):      # a dark outline keeps a box visible on a like-coloured image
            d.rectangle([r[0] - 1, r[1] - 1, r[2] + 1, r[3] + 1], outline=INK, width=1)
            d.rectangle(r, outline=COLOURS[j % len(COLOURS)] if mask[j] else MASKED, width=2)
        placed = []
        for j, r in enumerate(rects):      # numbers outside the box where they fit, never on each other
            colour = COLOURS[j % len(COLOURS)] if mask[j] else MASKED
            tw, lh = _text_width(str(j), font) + 4, _line_height(font)
            tag = _place_tag(r, tw, lh, im.size, placed)
            placed.append(tag)
            d.rectangle(tag, fill=colour, outline=INK, width=1)
            d.text((tag[0] + 2, tag[1]), str(j), fill=BG, font=font)
    part = Part(im, [{"view": "source", "box": [0, 0, im.width, im.height]}])
    return labelled(part, ["source", f"{source.shape[1]}x{source.shape[0]}, boxes"], font)


def _place_tag(box, tw: int, lh: int, size, placed) -> list:
    """Where a box's number goes: above its top-left corner, else inside it, else below it,
    moved right until it overlaps no number already placed."""
    w, h = size
    for y in (box[1] - lh, box[1], box[3] + 1):
        if y < 0 or y + lh > h:
            continue
        x = max(0, min(box[0], w - tw))
        while x + tw <= w:
            tag = [x, y, x + tw, y + lh]
            if not any(t[0] < tag[2] and tag[0] < t[2] and t[1] < tag[3] and tag[1] < t[3] for t in placed):
                return tag
            x += tw + 1
    return [max(0, min(box[0], w - tw)), max(0, min(box[1], h - lh)), max(0, min(box[0], w - tw)) + tw,
            max(0, min(box[1], h - lh)) + lh]


def _video(b, batch, rs, zoom, font, generator):
    clips = batch.views[0][b]                         # (rho, T, 3, S, S)
    rho, t = _shape(clips)[:2]
    frames = _numpy(batch.extras["frame_index"][b]) if "frame_index" in batch.extras else None
    strips = []
    for c in range(rho):
        px = to_pixels(clips[c], rs.recipe(c))        # (T, S, S, 3)
        strip = hstack([pixels_part(px[f], zoom, f"clips[{c},{f}]") for f in range(t)], gap=max(PATCH_GAP, zoom))
        what = f"clip {c}: {t} frames, {px.shape[2]}x{px.shape[1]}"
        if frames is not None:
            what += ", frames " + " ".join(str(int(i)) for i in frames[c])
        strips.append(labelled(strip, [what], font, CAPTION_WIDTH))
    return [vstack(strips, gap=GAP)]


def _generic(b, batch, rs, zoom, font):
    parts = []
    for i, (name, t) in enumerate(zip(batch.names, batch.views)):
        s = _shape(t)
        if len(s) < 4 or s[-3] != 3:
            parts.append(text_part([name, f"shape {s[1:]}", "(not an image)"], font))
            continue
        x = t[b].reshape((-1,) + s[-3:])
        inner = s[1:-3]
        px = to_pixels(x, rs.recipe(i))
        for n in range(px.shape[0]):
            pos = np.unravel_index(n, inner) if inner else ()
            label = f"{name}[{','.join(str(int(p)) for p in pos)}]" if inner else name
            parts.append(labelled(pixels_part(px[n], zoom, label), [f"{label}  {px.shape[2]}x{px.shape[1]}"], font))
    return parts


def _sample_label(b, batch, classes, font) -> Part:
    idx = int(_numpy(batch.index[b]))
    label = int(_numpy(batch.label[b]))
    name = classes[label] if classes and 0 <= label < len(classes) else ("-" if label < 0 else str(label))
    lines = [f"#{idx}", f"label {name}"]
    if not bool(_numpy(batch.valid[b])):
        lines.append("(padding)")
    return text_part(lines, font, LABEL_WIDTH)


def render(batch, generator, recipes, *, title: str = "", sources: dict | None = None, zoom: int | None = None,
           classes=None, categories=None, font=None) -> Image.Image:
    """The sheet of ``batch`` (a :class:`~clvr.pipeline.batch.ViewBatch` from ``generator``).

    Args:
        recipes: the loader's per-view recipes (``loader.ctx.recipes``), to undo the normalisation.
        sources: global sample index -> source image (H, W, 3) uint8, for ``object_crops``.
        zoom: integer enlargement of every view (default: enough for the largest to reach 96 px).
        classes, categories: names for labels and object categories.

    Returns a PIL image whose ``info["clvr:layout"]`` is the JSON layout (see the module doc).
    """
    font = font or _font()
    rs = _Recipes(recipes)
    kind = _kind(generator)
    if kind != "generic" and not _fits(kind, batch):
        kind = "generic"
    zoom = int(zoom) if zoom else _auto_zoom(kind, batch, sources)
    rows = []
    for b in range(len(batch)):
        if kind in ("side", "multi", "text"):
            blocks = _side_by_side(b, batch, rs, kind, zoom, font, generator)
        elif kind == "cpc":
            blocks = _cpc(b, batch, rs, zoom, font, generator)
        elif kind == "jigsaw":
            blocks = _jigsaw(b, batch, rs, zoom, font, generator)
        elif kind == "objects":
            source = (sources or {}).get(int(_numpy(batch.index[b])))
            blocks = _objects(b, batch, rs, zoom, font, generator, source, categories)
        elif kind == "video":
            blocks = _video(b, batch, rs, zoom, font, generator)
        else:
            blocks = _generic(b, batch, rs, zoom, font)
        row = hstack([_sample_label(b, batch, classes, font)] + blocks, gap=GAP)
        for r in row.regions:
            r["sample"] = b
            r["index"] = int(_numpy(batch.index[b]))
        rows.append(row)
    width = max([r.size[0] for r in rows] + [MIN_WIDTH])
    gap = 2 * PAD + 1
    body = vstack([Part(Image.new("RGB", (width, 1), BG))] + rows, gap=gap, fill=BG)
    d = ImageDraw.Draw(body.image)           # a rule halfway between samples
    y = 1 + gap
    for row in rows[:-1]:
        y += row.size[1]
        d.line([(0, y + PAD), (width, y + PAD)], fill=RULE, width=1)
        y += gap
    head = text_part([w for line in title.splitlines() for w in _wrap(line, width - 2, font)], font, width)
    sheet = vstack([head, body], gap=PAD)
    out = Image.new("RGB", (sheet.size[0] + 2 * PAD, sheet.size[1] + 2 * PAD), BG)
    out.paste(sheet.image, (PAD, PAD))
    regions = [{"sample": r["sample"], "index": r["index"], "view": r["view"],
                "box": [c + PAD for c in r["box"]]} for r in sheet.regions]
    out.info[LAYOUT_KEY] = json.dumps({"title": title, "generator": generator.name, "layout": kind,
                                       "zoom": zoom, "samples": len(batch), "regions": regions})
    return out


def read_layout(png) -> dict:
    """The layout a sheet written by :func:`preview` records (see the module doc)."""
    with Image.open(png) as im:
        im.load()
        return json.loads(im.text[LAYOUT_KEY])


# ----------------------------------------------------------------------------- source images

def source_images(shards, indices) -> dict[int, np.ndarray]:
    """Global sample index -> its decoded image (H, W, 3) uint8 at its original size, read from
    the local shard at the DALI index file's offsets. Samples that cannot be read (remote shards,
    a bad image: the loader reports those) are left out, and the sheet says so."""
    from .errors import PipelineError
    from .source import read_index

    wanted = {int(i) for i in indices}
    found: dict[int, np.ndarray] = {}
    if getattr(shards, "remote", False):
        return found
    for shard in shards.shards:
        todo = wanted - set(found)
        if not todo:
            break
        if shard.index is None:
            continue
        try:
            found.update(_read_sources(shard.tar, read_index(shard.index, shard.tar), shard.first_index, todo))
        except (OSError, PipelineError):
            continue
    return found


def _read_sources(tar: str, entries, first_index, todo: set) -> dict[int, np.ndarray]:
    import io

    from clvr.shards.format import IMAGE_EXTS, INDEX_EXT

    found = {}
    with open(tar, "rb") as f:
        def index_of(entry):
            off, size = entry.components.get(INDEX_EXT, (None, 0))
            if off is None or size != 8:
                return None
            f.seek(off)
            return int.from_bytes(f.read(8), "little", signed=True)

        picked = {}
        if first_index is not None:          # a manifest's shard: entry k holds index first + k
            for i in todo:
                k = i - first_index
                if 0 <= k < len(entries) and index_of(entries[k]) == i:
                    picked[i] = entries[k]
        if len(picked) < len(todo):          # otherwise look every entry's index up
            for entry in entries:
                i = index_of(entry)
                if i in todo and i not in picked:
                    picked[i] = entry
        for i, entry in picked.items():
            ext = next((x for x in IMAGE_EXTS if x in entry.components), None)
            if ext is None:
                continue
            off, size = entry.components[ext]
            f.seek(off)
            try:
                with Image.open(io.BytesIO(f.read(size))) as im:
                    found[i] = np.asarray(im.convert("RGB"))
            except Exception:                # a bad image: the loader names it; show no source
                continue
    return found


# ----------------------------------------------------------------------------- the command

@dataclass
class PreviewResult:
    path: Path
    samples: int
    generator: str
    skipped: list
    zoom: int
    size: tuple


def default_split(data, split):
    """``split`` as given; else, for a shard set with several splits, ``train`` (or the first)."""
    if split is not None or not isinstance(data, (str, Path)):
        return split
    from clvr.shards.errors import ShardError
    from clvr.shards.manifest import MANIFEST_NAME, shard_sets
    path = Path(data)
    if not (path.is_dir() or path.name == MANIFEST_NAME):
        return None
    try:
        sets = shard_sets(path)
    except (ShardError, OSError, ValueError):
        return None                             # resolve() names the problem
    if len(sets) <= 1:
        return None
    return "train" if "train" in sets else next(iter(sets))


def preview(data, views, out, *, recipe=None, view_options=None, split=None, samples: int = 8, seed: int = 0,
            device: str = "auto", on_error: str = "raise", photometric: str = "dali", zoom: int | None = None,
            num_threads: int | None = None) -> PreviewResult:
    """Render one batch of ``views`` over ``data`` (shuffled, seeded) to the PNG ``out``."""
    from .errors import PipelineError
    from .loader import ViewLoader

    if samples < 1:
        raise PipelineError(f"samples = {samples} must be at least 1")
    split = default_split(data, split)
    loader = ViewLoader(data, views, recipe=recipe, batch_size=samples, device=device, seed=seed, shuffle=True,
                        rank=0, world_size=1, last_batch="partial", on_error=on_error, photometric=photometric,
                        split=split, view_options=view_options, num_threads=num_threads)
    try:
        batch = next(iter(loader), None)
        if batch is None or len(batch) == 0:
            raise PipelineError(f"{loader.shards.spec}: the loader yielded no samples")
        gen = loader.generator
        sources = source_images(loader.shards, batch.index.tolist()) if "boxes" in gen.needs else None
        recipe_name = recipe if isinstance(recipe, (str, Path)) else (
            "custom" if recipe is not None else f"{gen.default_recipe} (default)")
        where = f"{data}" + (f" [{split}]" if split else "")
        title = (f"clvr views preview: {gen.describe()}\n"
                 f"recipe {recipe_name} | data {where} | seed {seed} | device {loader.device} | "
                 f"views {'fused' if loader.ctx.fused else 'dali' if photometric == 'dali' else 'kornia'} | "
                 f"{len(batch)} samples")
        image = render(batch, gen, loader.ctx.recipes, title=title, sources=sources, zoom=zoom,
                       classes=loader.shards.classes, categories=loader.shards.categories)
        skipped = list(loader.skipped)
    finally:
        loader.close()
    out = Path(out)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(LAYOUT_KEY, image.info[LAYOUT_KEY])
    image.save(out, format="PNG", pnginfo=info)
    layout = json.loads(image.info[LAYOUT_KEY])
    return PreviewResult(out, len(batch), gen.name, skipped, layout["zoom"], image.size)

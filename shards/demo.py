"""Embedded demo data: scikit-learn's 1,797 real handwritten digits (8x8, 0..16), no download.

Every demo is written as a stratified, seeded split into ``OUT/train`` and ``OUT/val``; the
split is made over the source digits first, so no digit appears in both.

* ``digits``: each digit upsampled to 32x32 and drawn in a named ink colour on a named
  background colour (drawn per sample from a fixed palette), PNG, label = the digit.
  The colours make colour augmentation matter, as it does on photographs.
* ``digits-video``: 16-frame 64x64 clips (8 fps, VP9 WebM) of one digit moving in a straight
  line and bouncing off the borders; label = the digit.
* ``digits-objects``: 96x96 canvases with 1-4 digits at random places and scales (16-40 px);
  boxes are the tight ink boxes, category = the digit; label = the class of the digit drawn
  at the largest scale.
* ``digits-captions``: the ``digits`` images with a caption that names the digit and colours.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .boxes import iou
from .format import BOXCLS_EXT, BOXES_EXT, TEXT_EXT, encode_boxes
from .job import Item, Prepared

from .cli import DEMOS  # noqa: E402  (one list of names, kept where the parser needs it cheaply)
#: the view recipe that learns on the ``digits`` demo, measured (``bench/method_quality.py``):
#: crops that keep most of the digit, every view's colours distorted (hue over the whole circle),
#: some views grey, none flipped (mirrored digits are not digits: SimCLR, 60 epochs, seed 0, flips
#: at p = 0.5 measured kNN 81.3, linear 85.2 and 1%-label linear 48.2 against 89.4, 92.2 and 52.6
#: without); 16 px (the scans are 8 x 8)
DIGITS_RECIPE = {"base": "simclr-cifar", "size": 16, "crop": {"scale": [0.7, 1.0]},
                 "jitter": {"p": 1.0, "brightness": 0.6, "contrast": 0.6, "saturation": 1.0, "hue": 0.5},
                 "grayscale": {"p": 0.2}, "flip": {"p": 0.0}}

#: each demo's recommended recipe, recorded in its manifest (``clvr train`` uses it by default)
RECIPES = {"digits": DIGITS_RECIPE, "digits-video": {**DIGITS_RECIPE, "size": 32},
           "digits-objects": {**DIGITS_RECIPE, "size": 16}, "digits-captions": DIGITS_RECIPE}


def demo_recommendation(name: str) -> dict:
    """The manifest's ``recommended`` entry of demo ``name``."""
    from .recommended import entry
    return entry(dict(RECIPES[name]), f"clvr shard demo {name}: the recipe the digits demo measured best "
                                      "(crops keeping 70-100% of the digit, strong colour jitter, no flips; "
                                      "bench/method_quality.py)")


CLASS_NAMES = [str(d) for d in range(10)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PALETTE = {
    "black": (20, 20, 20), "white": (240, 240, 240), "red": (210, 40, 40), "green": (40, 160, 60),
    "blue": (40, 70, 200), "yellow": (235, 210, 50), "orange": (240, 140, 30), "purple": (130, 60, 170),
    "pink": (240, 140, 180), "brown": (120, 75, 40), "grey": (128, 128, 128), "cyan": (60, 200, 210),
}
COLOUR_NAMES = sorted(PALETTE)
IMAGE_SIDE = 32
VIDEO_SIDE, VIDEO_FRAMES, VIDEO_FPS, VIDEO_DIGIT = 64, 16, 8, 28
CANVAS_SIDE, MIN_SCALE, MAX_SCALE = 96, 16, 40


def load_digits_arrays():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(int)


def _colours(rng: np.random.Generator) -> tuple[str, str]:
    """A (ink, background) pair of distinct palette colours with visible contrast."""
    while True:
        fg, bg = rng.choice(len(COLOUR_NAMES), size=2, replace=False)
        a, b = np.array(PALETTE[COLOUR_NAMES[fg]]), np.array(PALETTE[COLOUR_NAMES[bg]])
        if np.abs(a - b).sum() >= 150:
            return COLOUR_NAMES[fg], COLOUR_NAMES[bg]


def _ink(pixels8: np.ndarray, side: int) -> np.ndarray:
    """8x8 intensities -> side x side ink coverage in [0, 1] (bicubic upsampling)."""
    im = Image.fromarray(pixels8, "L").resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(im, np.float32) / 255.0


def _paint(alpha: np.ndarray, fg, bg) -> np.ndarray:
    a = alpha[..., None]
    return (np.array(fg, np.float32) * a + np.array(bg, np.float32) * (1 - a)).round().astype(np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def build_items(name: str, seed: int, limit: int | None = None) -> list[Item]:
    """The demo's source items (before the split). Each carries what its sample is drawn from."""
    images, labels = load_digits_arrays()
    n = len(labels) if limit is None else min(limit, len(labels))
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        fg, bg = _colours(rng)
        extra = {"pixels": images[i].tolist(), "fg": fg, "bg": bg, "seed": int(rng.integers(2**31))}
        items.append(Item(f"sklearn-digits/{i:04d}", int(labels[i]), extra))
    return items


def compose_object_items(pool: list[Item], seed: int, count: int | None = None) -> list[Item]:
    """Canvases for ``digits-objects``, each placing 1-4 digits drawn from ``pool`` (one split's
    digits) at random places and scales, overlapping little (IoU < 0.2 where 20 tries allow).
    The canvas label is the class of its largest digit."""
    rng = np.random.default_rng(seed)
    count = len(pool) if count is None else count
    order = rng.permutation(len(pool))
    items, cursor = [], 0
    for c in range(count):
        placed = []
        for _ in range(int(rng.integers(1, 5))):
            m = pool[int(order[cursor % len(pool)])]
            cursor += 1
            for _try in range(20):
                side = int(rng.integers(MIN_SCALE, MAX_SCALE + 1))
                x, y = (int(v) for v in rng.integers(0, CANVAS_SIDE - side + 1, size=2))
                if all(iou((x, y, side, side), (p["x"], p["y"], p["side"], p["side"])) < 0.2 for p in placed):
                    break
            placed.append({"pixels": m.extra["pixels"], "label": m.label, "src": m.src,
                           "x": x, "y": y, "side": side})
        fg, bg = _colours(rng)
        largest = max(placed, key=lambda p: p["side"])
        items.append(Item(f"digits-objects/{c:05d}", largest["label"],
                          {"digits": placed, "fg": fg, "bg": bg}))
    return items


class PrepareDemo:
    def __init__(self, name: str):
        if name not in DEMOS:
            raise ValueError(f"unknown demo {name!r}; choose from {', '.join(DEMOS)}")
        self.name = name

    def __call__(self, item: Item) -> Prepared:
        return {"digits": self._digit, "digits-captions": self._caption, "digits-video": self._video,
                "digits-objects": self._objects}[self.name](item)

    def _digit_image(self, item: Item) -> np.ndarray:
        ex = item.extra
        alpha = _ink(np.array(ex["pixels"], np.uint8), IMAGE_SIDE)
        return _paint(alpha, PALETTE[ex["fg"]], PALETTE[ex["bg"]])

    def _digit(self, item: Item) -> Prepared:
        ex = item.extra
        return Prepared({"png": _png(self._digit_image(item))},
                        {"width": IMAGE_SIDE, "height": IMAGE_SIDE, "ink": ex["fg"], "background": ex["bg"]})

    def _caption(self, item: Item) -> Prepared:
        ex = item.extra
        rng = np.random.default_rng(ex["seed"])
        word, fg, bg = WORDS[item.label], ex["fg"], ex["bg"]
        templates = [f"a handwritten {word} in {fg} on {_a(bg)} {bg} background",
                     f"the digit {item.label} written in {fg} ink on {bg}",
                     f"{_a(fg)} {fg} number {word} on {_a(bg)} {bg} square",
                     f"{fg} handwriting of the number {item.label} over {bg}"]
        caption = templates[int(rng.integers(len(templates)))]
        return Prepared({"png": _png(self._digit_image(item)), TEXT_EXT: caption.encode()},
                        {"width": IMAGE_SIDE, "height": IMAGE_SIDE, "captions": [caption],
                         "ink": fg, "background": bg})

    def _video(self, item: Item) -> Prepared:
        import av

        ex = item.extra
        rng = np.random.default_rng(ex["seed"])
        alpha = _ink(np.array(ex["pixels"], np.uint8), VIDEO_DIGIT)
        fg, bg = PALETTE[ex["fg"]], PALETTE[ex["bg"]]
        room = VIDEO_SIDE - VIDEO_DIGIT
        pos = rng.uniform(0, room, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        vel = rng.uniform(1.5, 3.0) * np.array([np.cos(angle), np.sin(angle)])
        out = io.BytesIO()
        with av.open(out, "w", format="webm", options={"fflags": "+bitexact"}) as dst:
            vs = dst.add_stream("libvpx-vp9", rate=VIDEO_FPS)
            vs.width = vs.height = VIDEO_SIDE
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}
            track = []
            for t in range(VIDEO_FRAMES):
                x, y = int(round(pos[0])), int(round(pos[1]))
                track.append([x, y])
                canvas = np.zeros((VIDEO_SIDE, VIDEO_SIDE), np.float32)
                canvas[y:y + VIDEO_DIGIT, x:x + VIDEO_DIGIT] = alpha
                frame = av.VideoFrame.from_ndarray(_paint(canvas, fg, bg), format="rgb24")
                frame.pts = t
                for pkt in vs.encode(frame):
                    dst.mux(pkt)
                pos = pos + vel
                for k in range(2):  # bounce off the borders
                    if pos[k] < 0 or pos[k] > room:
                        vel[k] = -vel[k]
                        pos[k] = min(max(pos[k], 0), room)
            for pkt in vs.encode():
                dst.mux(pkt)
        meta = {"width": VIDEO_SIDE, "height": VIDEO_SIDE, "frames": VIDEO_FRAMES, "fps": VIDEO_FPS,
                "duration": VIDEO_FRAMES / VIDEO_FPS, "codec": "vp9", "container": "webm",
                "cpu_decodable": True, "track": track, "ink": ex["fg"], "background": ex["bg"]}
        return Prepared({"webm": out.getvalue()}, meta, stats=["codec:vp9"])

    def _objects(self, item: Item) -> Prepared:
        ex = item.extra
        canvas = np.zeros((CANVAS_SIDE, CANVAS_SIDE), np.float32)
        boxes = []
        for d in ex["digits"]:
            x, y, side = d["x"], d["y"], d["side"]
            alpha = _ink(np.array(d["pixels"], np.uint8), side)
            region = canvas[y:y + side, x:x + side]
            np.maximum(region, alpha, out=region)
            ys, xs = np.nonzero(alpha > 0.25)
            if len(xs) == 0:
                continue
            boxes.append({"bbox": [x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min()) + 1,
                                   int(ys.max() - ys.min()) + 1],
                          "category": d["label"], "src": d["src"]})
        img = _paint(canvas, PALETTE[ex["fg"]], PALETTE[ex["bg"]])
        comps = {"png": _png(img)}
        comps[BOXES_EXT], comps[BOXCLS_EXT] = encode_boxes(boxes)
        meta = {"width": CANVAS_SIDE, "height": CANVAS_SIDE, "boxes": boxes, "box_source": "ground_truth",
                "ink": ex["fg"], "background": ex["bg"]}
        return Prepared(comps, meta)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"

"""Generate JPEGs of real photographs (about 500x375) cut from scikit-image's sample photos.

    python bench/photos.py OUT_DIR --count 512

Each image is a random window of one of the colour photos, at a random scale and flip, saved as
a quality-90 JPEG. The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
           "retina", "stereo_motorcycle", "chelsea", "colorwheel")


def photos():
    import skimage.data as data
    out = []
    for name in SOURCES:
        img = getattr(data, name)()
        if isinstance(img, tuple):
            img = img[0]
        out.append(Image.fromarray(np.ascontiguousarray(img[..., :3])))
    return out


def make(out_dir: Path, count: int, seed: int = 0, width: int = 500, height: int = 375) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = photos()
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        # Scale so that the window fits, with some random zoom.
        need = max(width / src.width, height / src.height)
        scale = need * rng.uniform(1.0, 1.6)
        img = src.resize((max(width, round(src.width * scale)), max(height, round(src.height * scale))),
                         Image.BILINEAR)
        x = int(rng.integers(0, img.width - width + 1))
        y = int(rng.integers(0, img.height - height + 1))
        img = img.crop((x, y, x + width, y + height))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        path = out_dir / f"{i % len(SOURCES)}" / f"photo-{i:05d}.jpg"
        path.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"wrote {len(make(a.out, a.count, a.seed))} JPEGs to {a.out}")

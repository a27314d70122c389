"""Unsupervised object proposals for object-crop views on unlabelled images.

``felzenszwalb``: scikit-image's graph-based segmentation (the masks DetCon uses: scale 1000,
minimum segment 1000 px at full resolution). It runs on a copy with the long side at
``work_side`` px, with the minimum segment size scaled by the area ratio; each segment's
bounding box, in source pixels, is a proposal. Segments under ``min_area_fraction`` of the
image, and the box of the whole image, are dropped; the largest ``max_boxes`` are kept.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

METHODS = ("felzenszwalb",)


def felzenszwalb_boxes(image: Image.Image, max_boxes: int = 16, scale: float = 1000.0,
                       min_size: int = 1000, sigma: float = 0.8, work_side: int = 256,
                       min_area_fraction: float = 0.01) -> list[list[float]]:
    from skimage.segmentation import felzenszwalb

    w, h = image.size
    factor = min(1.0, work_side / max(w, h))
    small = image if factor == 1.0 else image.resize(
        (max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)
    arr = np.asarray(small.convert("RGB"))
    seg_min = max(1, int(round(min_size * factor * factor)))
    segments = felzenszwalb(arr, scale=scale, sigma=sigma, min_size=seg_min)
    sh, sw = segments.shape
    sx, sy = w / sw, h / sh
    boxes = []
    for label in np.unique(segments):
        ys, xs = np.nonzero(segments == label)
        area = len(xs) / float(sw * sh)
        if area < min_area_fraction:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        if x0 == 0 and y0 == 0 and x1 == sw and y1 == sh:
            continue  # the whole image is not an object proposal
        boxes.append((area, [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy]))
    boxes.sort(key=lambda ab: (-ab[0], ab[1]))
    return [[round(v, 2) for v in b] for _, b in boxes[:max_boxes]]

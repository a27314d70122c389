"""Object boxes: COCO-style ``[x, y, w, h]`` in pixels, checked against the image they belong to.

A box with a non-finite or non-positive width/height is *degenerate* and rejected; a box that
lies partly outside the image is clipped to it (logged as converted); a box with less than
``MIN_SIDE`` pixel of width or height left inside the image is rejected as outside.
"""

from __future__ import annotations

import math

MIN_SIDE = 1.0


def check_box(bbox, width: int, height: int) -> tuple[list[float] | None, str | None]:
    """Return ``(clipped_box, note)``; ``clipped_box`` is None when the box is rejected."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return None, f"malformed bbox {bbox!r} (want [x, y, w, h], four numbers)"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except OverflowError:
        return None, f"degenerate bbox {bbox!r}: a value too large for a float"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, f"degenerate bbox {bbox!r}: non-finite value"
    if w <= 0 or h <= 0:
        return None, f"degenerate bbox {bbox!r}: width and height must be positive"
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if x1 - x0 < MIN_SIDE or y1 - y0 < MIN_SIDE:
        return None, f"bbox {bbox!r} lies outside the {width}x{height} image"
    clipped = [x0, y0, x1 - x0, y1 - y0]
    if clipped != [x, y, w, h]:
        return clipped, f"bbox {bbox!r} clipped to the {width}x{height} image"
    return clipped, None


def iou(a, b) -> float:
    """Intersection over union of two ``[x, y, w, h]`` boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def scale_box(bbox, sx: float, sy: float) -> list[float]:
    x, y, w, h = bbox
    return [x * sx, y * sy, w * sx, h * sy]

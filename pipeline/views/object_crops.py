"""``object_crops``: K objects per image from its boxes, two augmented views of each.

Per image, ``objects`` (K) boxes are picked from the sample's ``boxes.f32`` (ground truth or
unsupervised proposals) by systematic sampling with a random offset: box
``(o + floor(k * n / K)) mod n`` for k = 0..K-1, with o uniform. Every box has the same chance of
being picked; the K picks are distinct when the image has n >= K boxes, and when it has fewer
each box is used at least ``floor(K / n)`` times (sampling with replacement).

Each pick gets a scale jitter (side x U(1 - ``scale_jitter``, 1 + ``scale_jitter``)) and a
translation jitter (U(-``shift_jitter``, ``shift_jitter``) x side), is clipped to the image, and
then gives two views, each a random resized crop of the box (area ``view_scale``) followed by the
rest of the recipe, drawn independently.

An image with no box: ``empty="image"`` (default) uses the whole image as its K objects
(category -1); ``empty="skip"`` marks its objects invalid in ``mask`` (the views are still
made from the whole image, so shapes stay fixed); the loader counts such samples.

Batch: ``views`` = one tensor (B, K, 2, 3, S, S) float32 named ``objects``; extras:
``mask`` (B, K) bool, ``category`` (B, K) int64 (-1: unknown or proposal), ``parent`` (B, K)
int64 (the sample's global index), ``box`` (B, K, 4) float32 jittered ``[x, y, w, h]`` px,
``source`` (B, K) int64: the row of the picked box in the sample's boxes (n for the whole image),
so that two picks of one box (an image with fewer boxes than K) can be told apart from two
objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from ..errors import PipelineError
from .base import ViewGenerator
from .registry import register_view


@register_view("object_crops")
class ObjectCrops(ViewGenerator):
    needs = frozenset({"image", "boxes"})
    view_names = ("objects",)

    @dataclass
    class Options:
        objects: int = 4
        size: int = 96
        scale_jitter: float = 0.2
        shift_jitter: float = 0.1
        view_scale: tuple[float, float] = (0.5, 1.0)
        empty: str = "image"         # image | skip
        min_side: float = 4.0        # boxes are grown to at least this many px

    def check(self):
        o = self.options
        if o.objects < 1 or o.size < 1:
            raise PipelineError(f"object_crops: objects and size must be positive ({o})")
        if o.empty not in ("image", "skip"):
            raise PipelineError(f"object_crops: empty = {o.empty!r}; choose image or skip")
        if not 0 <= o.scale_jitter < 1 or not 0 <= o.shift_jitter < 1:
            raise PipelineError("object_crops: scale_jitter and shift_jitter must be in [0, 1)")

    @property
    def num_recipes(self):
        return 2

    def photometric_recipes(self, ctx):
        return {0: ctx.recipe(0)}

    def graph(self, sample, ctx):
        o = self.options
        image = sample.image
        shape = fn.cast(sample.image_shape(), dtype=types.FLOAT)         # H, W, C
        height, width = shape[0], shape[1]
        whole = fn.reshape(fn.stack(0.0 * width, 0.0 * width, width, height), shape=[1, 4])
        boxes = fn.cat(fn.cast(sample.boxes, dtype=types.FLOAT), whole, axis=0)   # n + 1 rows
        cats = fn.cat(sample.box_classes, fn.constant(idata=[-1], dtype=types.INT64), axis=0)
        n = fn.cast(sample.boxes.shape()[0], dtype=types.FLOAT)
        has = fn.cast(n > 0.0, dtype=types.FLOAT)
        offset = dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * n)
        modulus = dmath.max(n, 1.0)
        views, masks, categories, picked, rows = [], [], [], [], []
        for k in range(o.objects):
            step = offset + dmath.floor(float(k) * n / float(o.objects))
            pick = step - dmath.floor(step / modulus) * modulus                  # step mod n
            row = fn.cast(has * pick + (1.0 - has) * n, dtype=types.INT64)   # the whole-image row if none
            box = boxes[row]
            x, y, w, h = self.jitter(box[0], box[1], box[2], box[3], width, height)
            obj = fn.slice(image, fn.stack(y, x), fn.stack(h, w), axis_names="HW",
                           normalized_anchor=False, normalized_shape=False,
                           out_of_bounds_policy="trim_to_shape")
            pair = []
            for v in range(2):
                r = ctx.recipe(v).replace(crop={"scale": list(o.view_scale), "p": 1.0})
                pair.append(ctx.view(obj, r, (o.size, o.size)))
            views.append(fn.stack(*pair))
            masks.append(has if o.empty == "skip" else has * 0.0 + 1.0)
            categories.append(cats[row])
            picked.append(fn.stack(x, y, w, h))
            rows.append(row)
        index = fn.cast(sample.index, dtype=types.INT64)
        return {"views": [fn.stack(*views)],
                "extras": {"mask": fn.cast(fn.stack(*masks), dtype=types.BOOL),
                           "category": fn.stack(*categories),
                           "parent": fn.reshape(fn.stack(*([index] * o.objects)), shape=[o.objects]),
                           "box": fn.stack(*picked),
                           "source": fn.stack(*rows)}}

    def jitter(self, x, y, w, h, width, height):
        o = self.options
        u = lambda lo, hi: fn.random.uniform(range=[lo, hi])  # noqa: E731
        cx = x + w * 0.5 + u(-o.shift_jitter, o.shift_jitter) * w
        cy = y + h * 0.5 + u(-o.shift_jitter, o.shift_jitter) * h
        w = dmath.max(w * u(1.0 - o.scale_jitter, 1.0 + o.scale_jitter), o.min_side)
        h = dmath.max(h * u(1.0 - o.scale_jitter, 1.0 + o.scale_jitter), o.min_side)
        x0 = dmath.min(dmath.max(cx - w * 0.5, 0.0), dmath.max(width - o.min_side, 0.0))
        y0 = dmath.min(dmath.max(cy - h * 0.5, 0.0), dmath.max(height - o.min_side, 0.0))
        w = dmath.min(w, width - x0)
        h = dmath.min(h, height - y0)
        return x0, y0, w, h

"""``video_clips``: rho clips of T frames at stride s from each video (rho-MoCo/BYOL, CVRL).

Each video is decoded (DALI's video decoder: CPU for VP8/VP9/MJPEG, NVDEC on a GPU), then
``clips`` clips of ``frames`` frames, ``stride`` frames apart, are taken at random starts:

- ``sampling="uniform"``: every clip's start is uniform over the video, independently;
- ``sampling="cvrl"``: the first clip's start is uniform; each other clip starts at a distance d
  drawn from a density that falls linearly to zero at the longest possible distance (CVRL),
  before or after the first clip.

Spatial augmentation is drawn once per clip and applied to all its frames (the same crop, flip
and colour); clips of one video are augmented independently.

A video shorter than a clip's span ((T - 1) * s + 1 frames): with ``short="shrink"`` (default)
the stride shrinks to the largest that fits, ``floor((F - 1) / (T - 1))``, and at least 1; if the
video has fewer than T frames, its last frame repeats. With ``short="repeat"`` the stride is kept
and frames past the end repeat the last frame.

Batch: ``views`` = one tensor (B, rho, T, 3, S, S) float32 named ``clips``;
``extras["frame_index"]`` (B, rho, T) int64: the source frame of each output frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from ..errors import PipelineError
from .base import ViewGenerator
from .registry import register_view


@register_view("video_clips")
class VideoClips(ViewGenerator):
    needs = frozenset({"video"})
    view_names = ("clips",)

    @dataclass
    class Options:
        clips: int = 2
        frames: int = 8
        stride: int = 8
        size: int = 112
        sampling: str = "uniform"    # uniform | cvrl
        short: str = "shrink"        # shrink | repeat

    def check(self):
        o = self.options
        if o.clips < 1 or o.frames < 1 or o.stride < 1 or o.size < 1:
            raise PipelineError(f"video_clips: clips, frames, stride and size must be positive ({o})")
        if o.sampling not in ("uniform", "cvrl"):
            raise PipelineError(f"video_clips: sampling = {o.sampling!r}; choose uniform or cvrl")
        if o.short not in ("shrink", "repeat"):
            raise PipelineError(f"video_clips: short = {o.short!r}; choose shrink or repeat")

    @property
    def num_recipes(self):
        return self.options.clips

    def on_device(self, batch, ctx):
        # The kornia stage draws once per clip (its frames share the draw), by the first recipe.
        if ctx.photometric == "kornia":
            from .. import kornia_stage
            batch = kornia_stage.apply(batch, {0: ctx.recipe(0)}, ctx.rng, group=self.options.frames)
        return batch

    def graph(self, sample, ctx):
        o = self.options
        video = sample.video()
        count = fn.cast(video.shape()[0], dtype=types.FLOAT)            # F
        stride = float(o.stride)
        if o.short == "shrink" and o.frames > 1:
            fit = dmath.floor((count - 1.0) / float(o.frames - 1))
            stride = dmath.max(dmath.min(fit, float(o.stride)), 1.0)
        span = stride * float(o.frames - 1) + 1.0
        room = dmath.max(count - span, 0.0)                             # D: largest start
        starts = self.starts(room, o)
        clips, index = [], []
        for c, start in enumerate(starts):
            frame_ids = [dmath.min(start + stride * float(k), count - 1.0) for k in range(o.frames)]
            ids = [fn.cast(f, dtype=types.INT64) for f in frame_ids]
            clip = fn.stack(*[video[i] for i in ids], axis_name="F")
            r = ctx.recipe(c)
            clips.append(ctx.view(clip, r, (o.size, o.size), video=True))
            index.append(fn.stack(*ids))
        return {"views": [fn.stack(*clips)], "extras": {"frame_index": fn.stack(*index)}}

    @staticmethod
    def starts(room, o):
        u = lambda: fn.random.uniform(range=[0.0, 1.0])  # noqa: E731
        if o.sampling == "uniform" or o.clips == 1:
            return [dmath.floor(u() * (room + 1.0)) for _ in range(o.clips)]
        first = dmath.floor(u() * (room + 1.0))
        out = [first]
        for _ in range(o.clips - 1):
            # Linearly decreasing density on [0, D]: d = D * (1 - sqrt(U)).
            d = dmath.floor(room * (1.0 - dmath.sqrt(u())))
            sign = fn.cast(fn.random.coin_flip(probability=0.5), dtype=types.FLOAT) * 2.0 - 1.0
            out.append(dmath.min(dmath.max(first + sign * d, 0.0), room))
        return out

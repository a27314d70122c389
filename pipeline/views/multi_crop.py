"""``multi_crop``: N global and M local crops of each image (SwAV-style multi-crop).

Batch: ``views`` = N tensors (B, 3, Sg, Sg) named ``global0``.. then M tensors (B, 3, Sl, Sl)
named ``local0``..; ``extras["num_global"]`` is not needed: count the names. Global crops take the
recipe's crop area (``scale``); local crops take ``local_scale`` (default 0.05-0.14, as SwAV), both
at the recipe's aspect ratios, and the rest of the recipe is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import fused_views
from ..errors import PipelineError
from .base import ViewGenerator
from .registry import register_view


@register_view("multi_crop")
class MultiCrop(ViewGenerator):
    needs = frozenset({"image"})

    @dataclass
    class Options:
        global_views: int = 2
        local_views: int = 6
        global_size: int = 0                       # 0: the recipe's size
        local_size: int = 96
        local_scale: tuple[float, float] = (0.05, 0.14)

    def check(self):
        o = self.options
        if o.global_views < 1 or o.local_views < 0:
            raise PipelineError(f"multi_crop: needs global_views >= 1 and local_views >= 0 "
                                f"(got {o.global_views}, {o.local_views})")
        if o.local_size < 1:
            raise PipelineError(f"multi_crop: local_size = {o.local_size} must be positive")

    def names(self):
        o = self.options
        return tuple([f"global{i}" for i in range(o.global_views)] + [f"local{i}" for i in range(o.local_views)])

    @property
    def num_recipes(self):
        return self.options.global_views

    def local_recipe(self, ctx, i):
        return ctx.recipe(i).replace(crop={"scale": list(self.options.local_scale)}, size=self.options.local_size)

    def photometric_recipes(self, ctx):
        o = self.options
        out = {i: ctx.recipe(i) for i in range(o.global_views)}
        out.update({o.global_views + j: self.local_recipe(ctx, j) for j in range(o.local_views)})
        return out

    def specs(self, ctx):
        """(recipe, size) of every view, globals first."""
        o = self.options
        out = [(ctx.recipe(i), o.global_size or ctx.recipe(i).size) for i in range(o.global_views)]
        return out + [(self.local_recipe(ctx, j), o.local_size) for j in range(o.local_views)]

    def host_views(self, inputs, ctx):
        return fused_views.views(inputs["image"], self.specs(ctx), ctx.np_rng, threads=ctx.threads)

    def graph(self, sample, ctx):
        o = self.options
        image = sample.image
        if ctx.fused:                      # CPU: DALI decodes, the fused kernel makes the views
            return {"views": [], "host": {"image": image}}
        views = []
        for i in range(o.global_views):
            r = ctx.recipe(i)
            size = o.global_size or r.size
            views.append(ctx.view(image, r, (size, size)))
        for j in range(o.local_views):
            r = self.local_recipe(ctx, j)
            views.append(ctx.view(image, r, (o.local_size, o.local_size)))
        return {"views": views}

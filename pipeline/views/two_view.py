"""``two_view``: N independently augmented views of each image (SimCLR, MoCo, BYOL).

Batch: ``views`` = N tensors (B, 3, S, S) float32, normalised; names ``view0`` .. ``view{N-1}``.
S is the recipe's ``size`` unless ``size`` is given. View ``i`` uses recipe ``i`` of the recipe
set (BYOL's asymmetric preset has two). With ``shared_crop=True`` every view shares one random
crop (the first recipe's) and gets its own flip and colour.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import augment, fused_views
from ..errors import PipelineError
from .base import ViewGenerator
from .registry import register_view


@register_view("two_view")
class TwoView(ViewGenerator):
    needs = frozenset({"image"})

    @dataclass
    class Options:
        views: int = 2
        size: int = 0            # 0: each recipe's own size
        shared_crop: bool = False

    def check(self):
        if self.options.views < 1:
            raise PipelineError(f"two_view: views = {self.options.views} must be at least 1")

    def names(self):
        return tuple(f"view{i}" for i in range(self.options.views))

    def sizes(self, ctx):
        o = self.options
        sizes = [o.size or ctx.recipe(i).size for i in range(o.views)]
        if o.shared_crop and len(set(sizes)) != 1:
            raise PipelineError("two_view: shared_crop needs every view at the same size")
        return sizes

    def graph(self, sample, ctx):
        o = self.options
        image = sample.image
        if ctx.fused:                      # CPU: DALI decodes, the fused kernel makes the views
            self.sizes(ctx)
            return {"views": [], "host": {"image": image}}
        sizes = [(s, s) for s in self.sizes(ctx)]
        if o.shared_crop:
            cropped = augment.crop(image, ctx.recipe(0), sizes[0])
            views = [augment.after_crop(cropped, ctx.recipe(i), sizes[i], ctx.photometric == "dali")
                     for i in range(o.views)]
        else:
            views = [ctx.view(image, ctx.recipe(i), sizes[i]) for i in range(o.views)]
        return {"views": views}

    def host_views(self, inputs, ctx):
        specs = [(ctx.recipe(i), s) for i, s in enumerate(self.sizes(ctx))]
        return fused_views.views(inputs["image"], specs, ctx.np_rng,
                                 shared_crop=self.options.shared_crop, threads=ctx.threads)

"""``two_view``: N independently augmented views of each image (SimCLR, MoCo, BYOL).

Batch: ``views`` = N tensors (B, 3, S, S) float32, normalised; names ``view0`` .. ``view{N-1}``.
S is the recipe's ``size`` unless ``size`` is given. View ``i`` uses recipe ``i`` of the recipe
set (BYOL's asymmetric preset has two). With ``shared_crop=True`` every view shares one random
crop (the first recipe's) and gets its own flip and colour.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import augment
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

    def graph(self, sample, ctx):
        o = self.options
        image = sample.image
        sizes = [(o.size or ctx.recipe(i).size,) * 2 for i in range(o.views)]
        if o.shared_crop:
            if len(set(sizes)) != 1:
                raise PipelineError("two_view: shared_crop needs every view at the same size")
            cropped = augment.crop(image, ctx.recipe(0), sizes[0])
            views = [augment.after_crop(cropped, ctx.recipe(i), sizes[i], ctx.photometric == "dali")
                     for i in range(o.views)]
        else:
            views = [ctx.view(image, ctx.recipe(i), sizes[i]) for i in range(o.views)]
        return {"views": views}

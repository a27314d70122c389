"""``image_text``: one augmented view of the image, plus its caption (CLIP-style pairs).

Batch: ``views`` = one tensor (B, 3, S, S) named ``image``; ``text`` = list of B captions (str).
A sample with several captions (one per line of its ``txt``) gives one, chosen uniformly on each
read when ``caption="random"`` (default), or the first with ``caption="first"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PipelineError
from .base import ViewGenerator
from .registry import register_view


@register_view("image_text")
class ImageText(ViewGenerator):
    needs = frozenset({"image", "text"})
    view_names = ("image",)

    @dataclass
    class Options:
        size: int = 0              # 0: the recipe's size
        caption: str = "random"    # random | first

    def check(self):
        if self.options.caption not in ("random", "first"):
            raise PipelineError(f"image_text: caption = {self.options.caption!r}; choose random or first")

    def graph(self, sample, ctx):
        r = ctx.recipe(0)
        size = self.options.size or r.size
        return {"views": [ctx.view(sample.image, r, (size, size))]}

    def on_device(self, batch, ctx):
        if batch.text is not None:
            lines = [[ln for ln in t.splitlines() if ln.strip()] or [""] for t in batch.text]
            batch.text = [ls[0] if self.options.caption == "first" else
                          ls[int(torch.randint(len(ls), (1,), generator=ctx.rng))] for ls in lines]
        return super().on_device(batch, ctx)

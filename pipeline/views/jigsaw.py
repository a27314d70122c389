"""``jigsaw``: PIRL's jigsaw patches plus the full-image view.

For the patches the image is cropped (area ``scale``, default 0.6-1) and resized to ``side``
(255) px with the recipe's colour distortion, cut into 3 x 3 cells of ``side // 3`` (85) px, and one
``patch``-px (64) patch is taken at a uniformly random offset inside each cell (PIRL's jitter of
85 - 64 = 21 px). The nine patches are shuffled by a permutation drawn uniformly from a fixed set
(:func:`permutation_set`: ``permutations`` permutations of 9, chosen greedily for a large minimum
Hamming distance, the same for a given ``permutation_seed`` on every machine).

Batch: ``views`` = ``image`` (B, 3, S, S) (the recipe's view) and ``patches`` (B, 9, 3, P, P),
where ``patches[b, k]`` is the cell ``perm_set[perm[b], k]`` (cells numbered row by row);
``extras["perm"]`` (B,) int64 is the permutation id. ``jigsaw.permutation_set(...)`` gives the set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .. import augment
from ..errors import PipelineError
from .base import ViewGenerator
from .registry import register_view


@lru_cache(maxsize=8)
def permutation_set(count: int = 1000, seed: int = 0, candidates: int = 20000) -> np.ndarray:
    """``count`` permutations of range(9) (rows), greedily spread by Hamming distance."""
    rng = np.random.default_rng(seed)
    pool = np.array([rng.permutation(9) for _ in range(max(candidates, count))])
    pool = np.unique(pool, axis=0)
    chosen = [0]
    dist = (pool != pool[0]).sum(1)
    for _ in range(1, count):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, (pool != pool[nxt]).sum(1))
    return pool[chosen].astype(np.int64)


@register_view("jigsaw")
class Jigsaw(ViewGenerator):
    needs = frozenset({"image"})
    view_names = ("image", "patches")
    default_recipe = "pirl"

    @dataclass
    class Options:
        side: int = 255
        patch: int = 64
        scale: tuple[float, float] = (0.6, 1.0)
        permutations: int = 1000
        permutation_seed: int = 0

    def check(self):
        o = self.options
        if o.side // 3 < o.patch:
            raise PipelineError(f"jigsaw: cells of {o.side // 3} px cannot hold {o.patch}-px patches")
        if not 1 <= o.permutations <= 20000:
            raise PipelineError(f"jigsaw: permutations = {o.permutations} must be in 1..20000")
        self.perms = torch.from_numpy(permutation_set(o.permutations, o.permutation_seed))

    def photometric_recipes(self, ctx):
        return {0: ctx.recipe(0)}

    def graph(self, sample, ctx):
        o, r = self.options, ctx.recipe(0)
        image = sample.image
        full = ctx.view(image, r)
        jr = r.replace(crop={"scale": list(o.scale), "p": 1.0}, blur={"p": 0.0}, cutout={"p": 0.0},
                       rotate={"p": 0.0})
        cropped = augment.crop(image, jr, (o.side, o.side))
        big = augment.after_crop(cropped, jr, (o.side, o.side), ctx.photometric == "dali")
        self._jr = jr
        return {"views": [full, big]}

    def on_device(self, batch, ctx):
        o = self.options
        batch = super().on_device(batch, ctx)    # kornia stage for the full view, if chosen
        big = batch.views[1]
        if ctx.photometric == "kornia":
            from .. import kornia_stage
            big = kornia_stage.apply_recipe(big, self._jr, ctx.rng)
        b = big.shape[0]
        cell = o.side // 3
        gen = ctx.rng
        off = torch.randint(0, cell - o.patch + 1, (b, 9, 2), generator=gen)
        cells = torch.arange(9)
        top = (cells // 3) * cell + off[..., 0]            # (B, 9)
        left = (cells % 3) * cell + off[..., 1]
        ar = torch.arange(o.patch)
        rows = (top[..., None] + ar).to(big.device)         # (B, 9, P)
        cols = (left[..., None] + ar).to(big.device)
        bi = torch.arange(b, device=big.device)[:, None, None, None]
        # (B, 9, P, P, C) by advanced indexing, then channels first.
        patches = big.permute(0, 2, 3, 1)[bi, rows[:, :, :, None], cols[:, :, None, :]]
        patches = patches.permute(0, 1, 4, 2, 3)
        perm_id = torch.randint(0, len(self.perms), (b,), generator=gen)
        order = self.perms[perm_id].to(big.device)           # (B, 9)
        patches = patches[torch.arange(b, device=big.device)[:, None], order]
        batch.views = (batch.views[0], patches.contiguous())
        batch.extras["perm"] = perm_id.to(big.device)
        return batch

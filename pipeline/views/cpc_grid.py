"""``cpc_grid``: a G x G grid of overlapping patches of each image (CPC v1 and v2).

The image is resized (or, with a cropping recipe, randomly cropped) to ``side`` px (default 256),
then cut into a ``grid`` x ``grid`` grid of ``patch``-px patches at ``stride`` px (default 7 x 7,
64 px, stride 32: (7 - 1) * 32 + 64 = 256). With ``patch_augment`` (CPC v2) the recipe's colours,
flip and colour-channel drop are drawn for each patch on its own (the ``cpc-v2`` recipe: a flip
and one of three channels kept); otherwise the colours are the image's.

Batch: ``views`` = one tensor (B, G, G, 3, P, P) float32 named ``patches``; patch ``[b, i, j]``
starts at row ``i * stride``, column ``j * stride`` of the resized image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import augment
from ..errors import PipelineError
from .base import ViewGenerator
from .registry import register_view


def span_problem(side: int, grid: int, patch: int, stride: int) -> str | None:
    """Why a ``grid`` x ``grid`` grid of ``patch``-px patches at ``stride`` does not fit in a
    ``side``-px image, or None when it fits."""
    span = (grid - 1) * stride + patch
    if span > side:
        return f"a {grid}x{grid} grid of {patch}-px patches at stride {stride} spans {span} px, more than side = {side}"
    return None


@register_view("cpc_grid")
class CpcGrid(ViewGenerator):
    needs = frozenset({"image"})
    view_names = ("patches",)
    default_recipe = "cpc-v2"

    @dataclass
    class Options:
        side: int = 256
        grid: int = 7
        patch: int = 64
        stride: int = 32
        patch_augment: bool = True     # the recipe's colour, flip and channel drop per patch (CPC v2)

    def check(self):
        o = self.options
        if min(o.side, o.grid, o.patch, o.stride) < 1:
            raise PipelineError(f"cpc_grid: side, grid, patch and stride must be positive ({o})")
        problem = span_problem(o.side, o.grid, o.patch, o.stride)
        if problem:
            raise PipelineError(f"cpc_grid: {problem}")

    def photometric_recipes(self, ctx):
        return {}

    def graph(self, sample, ctx):
        o, r = self.options, ctx.recipe(0)
        image = augment.crop(sample.image, r, (o.side, o.side))
        whole = r.replace(flip={"p": 0.0}, rotate={"p": 0.0}, cutout={"p": 0.0}, channel_drop={"p": 0.0})
        if o.patch_augment:           # every patch gets its own colours in on_device: the image stays uint8
            view = augment.after_crop(image, whole, (o.side, o.side), photometric_in_graph=False)
        elif ctx.photometric == "dali":
            view = augment.normalize(augment.photometric(image, whole, o.side), whole)
        else:
            view = augment.after_crop(image, whole, (o.side, o.side), photometric_in_graph=False)
        return {"views": [view]}

    def on_device(self, batch, ctx):
        o, r = self.options, ctx.recipe(0)
        image = batch.views[0]
        if ctx.photometric == "kornia" and not o.patch_augment:
            from .. import kornia_stage
            image = kornia_stage.apply_recipe(image, r.replace(channel_drop={"p": 0.0}), ctx.rng)
        # (B, C, side, side) -> (B, C, G, G, P, P) -> (B, G, G, C, P, P)
        end = (o.grid - 1) * o.stride + o.patch
        patches = image[:, :, :end, :end].unfold(2, o.patch, o.stride).unfold(3, o.patch, o.stride)
        patches = patches.permute(0, 2, 3, 1, 4, 5).contiguous()
        if o.patch_augment:
            patches = self.augment_patches(patches, r, ctx.rng)
        batch.views = (patches,)
        return batch

    def augment_patches(self, patches: torch.Tensor, recipe, gen: torch.Generator) -> torch.Tensor:
        """uint8 patches -> normalised float patches, each with its own draw of the recipe's
        colours (jitter, grayscale, blur...), flip and channel drop, from the loader's seeded
        generator. A draw per image would give all the patches of an image one colour cast, and
        the prediction could find its target by colour instead of content (CPC v2 augments each
        patch on its own for this reason)."""
        from .. import kornia_stage
        b, g1, g2, c, p, _ = patches.shape
        flat = kornia_stage.apply_recipe(patches.reshape(-1, c, p, p), recipe.replace(channel_drop={"p": 0.0}), gen)
        n = flat.shape[0]
        if recipe.flip.p > 0:
            flip = (torch.rand(n, generator=gen) < recipe.flip.p).to(flat.device)
            flat = torch.where(flip[:, None, None, None], flat.flip(-1), flat)
        if recipe.channel_drop.p > 0:
            fire = (torch.rand(n, generator=gen) < recipe.channel_drop.p)
            keep = torch.randint(0, c, (n,), generator=gen)
            mask = torch.nn.functional.one_hot(keep, c).float()
            mask = torch.where(fire[:, None], mask, torch.ones_like(mask)).to(flat.device, flat.dtype)
            flat = flat * mask[:, :, None, None]   # dropped channels become 0 = the mean
        return flat.reshape(b, g1, g2, c, p, p)

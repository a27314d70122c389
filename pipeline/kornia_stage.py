"""The kornia stage: a recipe's photometric part as batched ops on the device tensors.

With ``photometric="kornia"`` the DALI graph does the geometry (crop, resize, rotation, flip)
and hands over uint8 CHW views; this stage then applies, per sample and with the recipe's
probabilities: colour jitter (brightness, contrast, saturation, hue in a random order, drawn once
per batch), grayscale, channel drop, Gaussian blur, solarize, Sobel, Gaussian noise and
cutout, and finally normalises. It runs wherever the tensors are (the GPU in training), batched,
so it is both an alternative backend and the home of ops DALI lacks.

Randomness comes from a seeded ``torch.Generator`` (the loader's, per rank), so a seed repeats.
Views of any shape ``(..., 3, H, W)`` are accepted: leading axes are flattened into the batch, so
each clip frame, patch or object view gets its own draw unless ``group`` is given, in which case
every ``group`` consecutive images share one draw (the frames of a clip).
"""

from __future__ import annotations

import math

import kornia
import torch

from .recipe import Recipe


def _uniform(x, lo, hi, gen, group):
    """One draw in [lo, hi) per group of ``group`` consecutive images of ``x``, per image."""
    u = torch.rand(x.shape[0] // group, generator=gen) * (hi - lo) + lo
    return u.repeat_interleave(group, 0).to(x.device)


def _coin(x, p, gen, group):
    """One draw of an event of probability ``p`` per group of images, per image (bool)."""
    return _uniform(x, 0.0, 1.0, gen, group) < p


def _where(mask, a, b):
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def color_jitter(x: torch.Tensor, recipe: Recipe, gen, group: int = 1) -> torch.Tensor:
    j = recipe.jitter
    if j.p <= 0:
        return x
    fire = _coin(x, j.p, gen, group)
    ops = []
    if j.brightness > 0:
        f = _uniform(x, max(0.0, 1 - j.brightness), 1 + j.brightness, gen, group)
        ops.append(lambda y, f=f: y * f.view(-1, 1, 1, 1))     # torchvision: multiply
    if j.contrast > 0:
        f = _uniform(x, max(0.0, 1 - j.contrast), 1 + j.contrast, gen, group)
        ops.append(lambda y, f=f: _contrast(y, f))
    if j.saturation > 0:
        f = _uniform(x, max(0.0, 1 - j.saturation), 1 + j.saturation, gen, group)
        ops.append(lambda y, f=f: _saturation(y, f))
    if j.hue > 0:
        f = _uniform(x, -j.hue, j.hue, gen, group) * 2 * math.pi
        ops.append(lambda y, f=f: kornia.enhance.adjust_hue(y, f))
    order = torch.randperm(len(ops), generator=gen).tolist()  # one order per batch
    out = x
    for i in order:
        out = ops[i](out).clamp(0, 1)
    return _where(fire, out, x)


def _saturation(y, factor):
    """torchvision's saturation: blend with the grey (luma) image. (kornia's adjust_saturation
    scales HSV saturation instead, which at 0 gives max(R, G, B), not the luma.)"""
    gray = kornia.color.rgb_to_grayscale(y)
    return factor.view(-1, 1, 1, 1) * y + (1 - factor.view(-1, 1, 1, 1)) * gray


def _contrast(y, factor):
    """torchvision's contrast: blend with the mean luma of each image."""
    mean = kornia.color.rgb_to_grayscale(y).mean(dim=(-3, -2, -1), keepdim=True)
    return (factor.view(-1, 1, 1, 1) * y + (1 - factor.view(-1, 1, 1, 1)) * mean).clamp(0, 1)


def grayscale(x, recipe: Recipe, gen, group: int = 1):
    p = recipe.grayscale.p
    if p <= 0:
        return x
    fire = _coin(x, p, gen, group)
    gray = kornia.color.rgb_to_grayscale(x).expand_as(x)
    return _where(fire, gray, x)


def gaussian_blur(x, recipe: Recipe, gen, group: int = 1):
    b = recipe.blur
    if b.p <= 0:
        return x
    fire = _coin(x, b.p, gen, group)
    sigma = _uniform(x, b.sigma[0], b.sigma[1], gen, group)
    k = b.window(min(x.shape[-2:]))
    blurred = kornia.filters.gaussian_blur2d(x, (k, k), torch.stack([sigma, sigma], -1), border_type="reflect")
    return _where(fire, blurred, x)


def solarize(x, recipe: Recipe, gen, group: int = 1):
    s = recipe.solarize
    if s.p <= 0:
        return x
    fire = _coin(x, s.p, gen, group)
    t = s.threshold / 255.0
    return _where(fire, torch.where(x >= t, 1.0 - x, x), x)


def sobel(x, recipe: Recipe, gen, group: int = 1):
    if recipe.sobel.p <= 0:
        return x
    fire = _coin(x, recipe.sobel.p, gen, group)
    # No epsilon under the root (kornia.filters.sobel adds 1e-6: 7e-4 on flat areas); no backward.
    grad = kornia.filters.spatial_gradient(kornia.color.rgb_to_grayscale(x), normalized=False)
    mag = torch.hypot(grad[:, :, 0], grad[:, :, 1])
    mag = (mag / (4.0 * math.sqrt(2.0)) * 4.0).clamp(0, 1).expand_as(x)
    return _where(fire, mag, x)


def noise(x, recipe: Recipe, gen, group: int = 1):
    nz = recipe.noise
    if nz.p <= 0:
        return x
    fire = _coin(x, nz.p, gen, group)
    std = _uniform(x, nz.std[0], nz.std[1], gen, group) / 255.0
    eps = torch.randn(x.shape, generator=gen).to(x.device)
    return _where(fire, (x + eps * std.view(-1, 1, 1, 1)).clamp(0, 1), x)


def cutout(x, recipe: Recipe, gen, group: int = 1):
    c = recipe.cutout
    if c.p <= 0:
        return x
    h, w = x.shape[-2:]
    fire = _coin(x, c.p, gen, group)
    edge = (_uniform(x, c.size[0], c.size[1], gen, group) * min(h, w)).round()
    top = (_uniform(x, 0.0, 1.0, gen, group) * (h - edge)).floor()
    left = (_uniform(x, 0.0, 1.0, gen, group) * (w - edge)).floor()
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    box = (ys >= top.view(-1, 1, 1)) & (ys < (top + edge).view(-1, 1, 1)) & \
          (xs >= left.view(-1, 1, 1)) & (xs < (left + edge).view(-1, 1, 1))
    box = box & fire.view(-1, 1, 1)
    return torch.where(box[:, None], torch.full_like(x, c.fill / 255.0), x)


def channel_drop(x, recipe: Recipe, gen, group: int = 1):
    """Keep one random channel; the other two become the normalisation mean (0 after it)."""
    if recipe.channel_drop.p <= 0:
        return x
    fire = _coin(x, recipe.channel_drop.p, gen, group)
    keep = torch.randint(0, 3, (x.shape[0] // group,), generator=gen).repeat_interleave(group, 0)
    mask = torch.nn.functional.one_hot(keep, 3).bool().to(x.device) | ~fire[:, None]
    mean = torch.tensor(recipe.normalize.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.where(mask[:, :, None, None], x, mean.expand_as(x))


STEPS = (color_jitter, grayscale, channel_drop, gaussian_blur, solarize, sobel, noise, cutout)


def apply_recipe(x: torch.Tensor, recipe: Recipe, gen: torch.Generator | None = None,
                 group: int = 1) -> torch.Tensor:
    """uint8 (or [0, 1] float) views ``(..., 3, H, W)`` -> normalised float32 after the recipe."""
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    shape = x.shape
    y = x.reshape(-1, *shape[-3:])
    y = y.float() / 255.0 if y.dtype == torch.uint8 else y.float()
    for step in STEPS:
        y = step(y, recipe, gen, group)
    mean = torch.tensor(recipe.normalize.mean, device=y.device).view(1, 3, 1, 1)
    std = torch.tensor(recipe.normalize.std, device=y.device).view(1, 3, 1, 1)
    return ((y - mean) / std).reshape(shape)


def apply(batch, recipes: dict, gen: torch.Generator | None = None, group: int = 1):
    """Apply ``recipes[i]`` to view ``i`` of a batch (views not listed are left as they are);
    every ``group`` consecutive images share one draw (the frames of a clip)."""
    views = list(batch.views)
    for i, recipe in recipes.items():
        views[i] = apply_recipe(views[i], recipe, gen, group)
    batch.views = tuple(views)
    return batch

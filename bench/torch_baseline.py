"""The usual PyTorch loader, as the throughput benchmark's baseline: the ``webdataset`` library
reads the shards, PIL decodes, and a clvr :class:`~clvr.pipeline.recipe.Recipe` is applied the way
torchvision's v1 transforms apply it to PIL images, in a ``torch.utils.data.DataLoader``.

clvr must not need torchvision, so the transforms are written here, step for step as torchvision
does them, with the recipe's probabilities and ranges:

- random resized crop: torchvision's box draw, then PIL's bilinear resize (antialiased);
- flip;
- colour jitter with probability p: brightness, contrast, saturation (PIL ``ImageEnhance``) and
  hue (H shifted in PIL's HSV) in a random order per view;
- grayscale: PIL's "L" (ITU-R 601) copied to three channels;
- Gaussian blur: a true Gaussian with the recipe's kernel (10% of the side, odd) and reflect
  borders, as torchvision's ``GaussianBlur`` does on tensors, but separable (two 1-D
  convolutions instead of torchvision's 23x23 one, which only makes the baseline faster);
  ``pil_blur=True`` uses PIL's own ``GaussianBlur`` instead, as MoCo v2's code does: faster,
  but a box-filter approximation of the Gaussian, so not quite the same recipe;
- solarize; to tensor; normalise.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter


def crop_box(width: int, height: int, scale, ratio, rnd: random.Random):
    area = width * height
    for _ in range(10):
        target = area * rnd.uniform(*scale)
        aspect = math.exp(rnd.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rnd.randint(0, height - h), rnd.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def adjust_hue(img: Image.Image, shift: float) -> Image.Image:
    h, s, v = img.convert("HSV").split()
    hh = np.asarray(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        hh = (hh + np.uint8(round(shift * 255) % 256)).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(hh, "L"), s, v)).convert("RGB")


def gaussian_blur(x: torch.Tensor, sigma: float, window: int) -> torch.Tensor:
    """(3, H, W) float, separable Gaussian, reflect borders."""
    r = window // 2
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = torch.nn.functional.pad(x[None], (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]


class RecipeTransform:
    """One view of a PIL image by a clvr Recipe (see the module doc)."""

    def __init__(self, recipe, size: int, pil_blur: bool = False):
        self.r = recipe
        self.pil_blur = pil_blur
        self.size = size
        self.window = recipe.blur.window(size)          # the recipe's kernel: 10% of the side, odd
        self.mean = torch.tensor(recipe.normalize.mean).view(3, 1, 1)
        self.std = torch.tensor(recipe.normalize.std).view(3, 1, 1)

    def __call__(self, img: Image.Image, rnd: random.Random) -> torch.Tensor:
        r = self.r
        if r.crop.p > 0 and rnd.random() < r.crop.p:
            y, x, h, w = crop_box(img.width, img.height, r.crop.scale, r.crop.ratio, rnd)
            img = img.resize((self.size, self.size), Image.BILINEAR, box=(x, y, x + w, y + h))
        else:
            img = img.resize((self.size, self.size), Image.BILINEAR)
        if rnd.random() < r.flip.p:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        j = r.jitter
        if j.p > 0 and rnd.random() < j.p:
            ops = [0, 1, 2, 3]
            rnd.shuffle(ops)
            for op in ops:
                if op == 0 and j.brightness > 0:
                    img = ImageEnhance.Brightness(img).enhance(rnd.uniform(max(0, 1 - j.brightness), 1 + j.brightness))
                elif op == 1 and j.contrast > 0:
                    img = ImageEnhance.Contrast(img).enhance(rnd.uniform(max(0, 1 - j.contrast), 1 + j.contrast))
                elif op == 2 and j.saturation > 0:
                    img = ImageEnhance.Color(img).enhance(rnd.uniform(max(0, 1 - j.saturation), 1 + j.saturation))
                elif op == 3 and j.hue > 0:
                    img = adjust_hue(img, rnd.uniform(-j.hue, j.hue))
        if r.grayscale.p > 0 and rnd.random() < r.grayscale.p:
            img = img.convert("L").convert("RGB")
        blur = r.blur.p > 0 and rnd.random() < r.blur.p
        sigma = rnd.uniform(*r.blur.sigma) if blur else 0.0
        if blur and self.pil_blur:
            img = img.filter(ImageFilter.GaussianBlur(radius=sigma))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1).copy())
        if blur and not self.pil_blur:
            x = gaussian_blur(x, sigma, self.window)
        if r.solarize.p > 0 and rnd.random() < r.solarize.p:
            x = torch.where(x >= r.solarize.threshold, 255.0 - x, x)
        return (x / 255.0 - self.mean) / self.std


class TwoViews:
    """webdataset sample -> (view0, view1, index); a fresh random stream per worker."""

    def __init__(self, recipes, size: int, pil_blur: bool = False):
        self.t = [RecipeTransform(r, size, pil_blur) for r in recipes]
        self.rnd = None

    def __call__(self, sample):
        if self.rnd is None:
            info = torch.utils.data.get_worker_info()
            self.rnd = random.Random(1234 + (info.id if info else 0))
        img = Image.open(sample["img"]).convert("RGB")   # PIL decode
        views = [t(img, self.rnd) for t in self.t]
        return (*views, int(np.frombuffer(sample["index.i64"], "<i8")[0]))


def loader(tars: list[str], recipes, size: int, batch_size: int, workers: int, pil_blur: bool = False):
    import io

    import webdataset as wds

    def as_file(sample):
        for ext in ("jpg", "jpeg", "png", "webp"):
            if ext in sample:
                return {"img": io.BytesIO(sample[ext]), "index.i64": sample["index.i64"]}
        raise ValueError(f"{sample['__key__']}: no image")

    ds = (wds.WebDataset(tars, shardshuffle=len(tars), nodesplitter=wds.split_by_node,
                         workersplitter=wds.split_by_worker, empty_check=False, seed=0)
          .shuffle(1024).map(as_file).map(TwoViews(recipes, size, pil_blur)))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                       persistent_workers=False, prefetch_factor=2 if workers else None)

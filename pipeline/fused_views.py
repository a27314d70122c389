"""Fused CPU views: every step of a view in one compiled pass per view, for CPU-only machines.

On a GPU, DALI makes the views (nvJPEG, then GPU ops). On a CPU, DALI's general-purpose CPU
operators cost most of the time: each one reads and writes the whole view, and its Gaussian blur
and antialiased resize are not vectorised. So on the CPU, DALI reads and decodes, and this module
makes the views of the image recipes: a numba kernel that goes from the decoded image to the
normalised float view in one call per view, parallel over the batch, with float32 intermediates
(no rounding to 8 bits between steps).

What it computes is the recipe, with the same draws as the usual torchvision pipeline on PIL
images (the reference that users compare with):

- **random resized crop**: torchvision's algorithm (ten tries of area and log-aspect, then a
  centre crop with the ratio clamped), integer boxes; the crop is then resized with a triangle
  (bilinear) filter widened by the scale when shrinking, PIL's antialiased bilinear;
- **centre crop** (``crop.center`` > 0, the evaluation view): the centre square of side
  ``center`` x the shorter side (:func:`center_boxes`), resized the same way;
- **flip**;
- **colour jitter**, with probability ``p``: brightness, contrast, saturation and hue in a random
  order per view, each clamped to [0, 255] as torchvision does; contrast blends with the mean
  luma of the image at that point, saturation with the per-pixel luma, hue shifts H in HSV;
- **grayscale**: ITU-R 601 luma (0.299, 0.587, 0.114) on the three channels;
- **Gaussian blur**: the recipe's kernel (``kernel`` x side, odd) with reflect-101 borders,
  normalised over the taps it keeps: at most ``ceil(4 sigma)`` each side, since the taps beyond
  weigh under 1e-4 of the kernel together (under 0.03 grey levels on any pixel);
- **channel drop** (after grayscale, as :data:`.recipe.ORDER` says), **solarize** and
  **normalize** as in :mod:`.augment`.

Recipes with rotation, Sobel, noise or cutout go through the DALI graph instead
(:func:`supported` says which).
"""

from __future__ import annotations

import math

import numpy as np

from .recipe import Recipe

# Parameter record of one view: float64, one row per view.
P_Y, P_X, P_H, P_W = 0, 1, 2, 3             # crop box in source pixels
P_FLIP = 4
P_JITTER = 5                                # 1: jitter fires
P_BRIGHT, P_CONTRAST, P_SAT, P_HUE = 6, 7, 8, 9
P_ORDER = 10                                # 4 slots: op ids 0..3 in the order applied
P_GRAY = 14
P_SIGMA = 15                                # 0: no blur
P_RADIUS = 16                               # blur taps each side
P_SOLAR = 17                                # threshold, or -1
P_KEEP = 18                                 # channel kept by channel drop, or -1
P_MEAN = 19                                 # 3 slots
P_STD = 22                                  # 3 slots
NPARAM = 25

LUMA_R, LUMA_G, LUMA_B = 0.299, 0.587, 0.114


def supported(recipe: Recipe) -> bool:
    """Whether the fused kernel implements every step of ``recipe`` (it always antialiases)."""
    return (recipe.rotate.p <= 0 and recipe.sobel.p <= 0 and recipe.noise.p <= 0
            and recipe.cutout.p <= 0 and recipe.crop.antialias)


def usable(device: str, photometric: str, cpu_views: str, recipes) -> bool:
    """Whether a loader with these settings makes image views with the fused kernel."""
    return (device == "cpu" and photometric == "dali" and cpu_views == "fused"
            and all(supported(r) for r in recipes))


# -- draws -------------------------------------------------------------------------------------

def crop_boxes(rng: np.random.Generator, heights, widths, scale, ratio, p: float = 1.0) -> np.ndarray:
    """Random-resized-crop boxes (y, x, h, w), one per image, by torchvision's algorithm.

    Ten tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first box that fits
    is placed uniformly. If none fits: a centre crop of the largest box with the aspect clamped
    to ``ratio``. Images that skip the crop (probability ``1 - p``) keep the whole image.
    """
    H = np.asarray(heights, dtype=np.float64)
    W = np.asarray(widths, dtype=np.float64)
    n, tries = H.shape[0], 10
    area = (H * W)[:, None] * rng.uniform(scale[0], scale[1], size=(n, tries))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, tries)))
    w = np.rint(np.sqrt(area * aspect))
    h = np.rint(np.sqrt(area / aspect))
    fits = (w > 0) & (h > 0) & (w <= W[:, None]) & (h <= H[:, None])
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(n), first]
    h = h[np.arange(n), first]
    w = w[np.arange(n), first]
    u = rng.random(size=(n, 2))
    y = np.floor(u[:, 0] * (H - h + 1))
    x = np.floor(u[:, 1] * (W - w + 1))
    # Fallback: centre crop, aspect clamped into the range.
    in_ratio = W / H
    fw = np.where(in_ratio < ratio[0], W, np.where(in_ratio > ratio[1], np.rint(H * ratio[1]), W))
    fh = np.where(in_ratio < ratio[0], np.rint(W / ratio[0]), H)
    fw, fh = np.clip(fw, 1, W), np.clip(fh, 1, H)            # never an empty box
    fy, fx = np.floor((H - fh) / 2), np.floor((W - fw) / 2)
    box = np.where(found[:, None], np.stack([y, x, h, w], 1), np.stack([fy, fx, fh, fw], 1))
    if p < 1.0:
        whole = rng.random(n) >= p
        box[whole] = np.stack([np.zeros(n), np.zeros(n), H, W], 1)[whole]
    return box


def center_boxes(heights, widths, center: float, aspect: float = 1.0) -> np.ndarray:
    """Centre-crop boxes (y, x, h, w), one per image: ``center`` x the largest centred box of
    aspect ``aspect`` (w/h) in the image; for the square views (aspect 1), the centre square of
    side ``center`` x the shorter side. Sides are rounded half up (at least 1 px), the origin is
    ``floor((H - h) / 2)``, ``floor((W - w) / 2)``: the same float64 arithmetic as the DALI
    graph's :func:`.augment.center_crop`, so both take the same pixels."""
    if not 0.0 < center <= 1.0:
        raise ValueError(f"crop.center = {center} is not in (0, 1]")
    H = np.asarray(heights, dtype=np.float64)
    W = np.asarray(widths, dtype=np.float64)
    full = np.minimum(H, W / aspect)
    h = np.maximum(np.floor(center * full + 0.5), 1.0)
    w = np.maximum(np.floor(center * full * aspect + 0.5), 1.0)
    return np.stack([np.floor((H - h) * 0.5), np.floor((W - w) * 0.5), h, w], 1)


def draw(rng: np.random.Generator, recipe: Recipe, shapes, size: int, boxes=None) -> np.ndarray:
    """The parameter records (n, NPARAM) of one view of each image of ``shapes`` (H, W[, C])."""
    n = len(shapes)
    prm = np.zeros((n, NPARAM), dtype=np.float64)
    heights = [s[0] for s in shapes]
    widths = [s[1] for s in shapes]
    c = recipe.crop
    if boxes is None:
        if c.center > 0:
            boxes = center_boxes(heights, widths, c.center)
        elif c.p > 0:
            boxes = crop_boxes(rng, heights, widths, c.scale, c.ratio, c.p)
        else:
            boxes = np.stack([np.zeros(n), np.zeros(n), heights, widths], 1)
    prm[:, P_Y:P_W + 1] = boxes
    prm[:, P_FLIP] = rng.random(n) < recipe.flip.p
    j = recipe.jitter
    prm[:, P_JITTER] = (rng.random(n) < j.p) if j.p > 0 else 0.0

    def factor(x):
        return rng.uniform(max(0.0, 1.0 - x), 1.0 + x, size=n) if x > 0 else np.ones(n)

    prm[:, P_BRIGHT] = factor(j.brightness)
    prm[:, P_CONTRAST] = factor(j.contrast)
    prm[:, P_SAT] = factor(j.saturation)
    prm[:, P_HUE] = rng.uniform(-j.hue, j.hue, size=n) if j.hue > 0 else 0.0
    prm[:, P_ORDER:P_ORDER + 4] = np.argsort(rng.random((n, 4)), axis=1)
    prm[:, P_GRAY] = rng.random(n) < recipe.grayscale.p
    b = recipe.blur
    if b.p > 0:
        fire = rng.random(n) < b.p
        sigma = rng.uniform(b.sigma[0], b.sigma[1], size=n)
        half = b.window(size) // 2
        prm[:, P_SIGMA] = np.where(fire, sigma, 0.0)
        prm[:, P_RADIUS] = np.where(fire, np.minimum(half, np.ceil(4.0 * sigma)), 0.0)
    s = recipe.solarize
    prm[:, P_SOLAR] = np.where(rng.random(n) < s.p, float(s.threshold), -1.0) if s.p > 0 else -1.0
    d = recipe.channel_drop
    prm[:, P_KEEP] = np.where(rng.random(n) < d.p, rng.integers(0, 3, size=n), -1) if d.p > 0 else -1.0
    prm[:, P_MEAN:P_MEAN + 3] = recipe.normalize.mean
    prm[:, P_STD:P_STD + 3] = recipe.normalize.std
    return prm


# -- kernels -----------------------------------------------------------------------------------

_KERNELS = None


def kernels():
    """Load the kernels; the first use on a machine compiles them (about 20 s on two cores),
    and numba caches the result on disk for every later process."""
    global _KERNELS
    if _KERNELS is None:
        import sys
        from pathlib import Path

        import numba
        caches = [Path(__file__).parent / "__pycache__"]
        if numba.config.CACHE_DIR:
            caches.append(Path(numba.config.CACHE_DIR))
        if not any(any(c.rglob("_fused_kernels.render_range-*.nbi")) for c in caches if c.is_dir()):
            print("clvr: compiling the fused CPU view kernels (once per install, about 20 s)...",
                  file=sys.stderr, flush=True)
        from . import _fused_kernels
        _KERNELS = _fused_kernels
    return _KERNELS


_POOLS: dict = {}


def _pool(threads: int):
    """A thread pool per process and size. The kernel releases the GIL, so plain threads run it
    in parallel; unlike numba's OpenMP layer this survives ``fork`` (a child makes its own pool)
    and takes calls from several threads at once."""
    import os
    from concurrent.futures import ThreadPoolExecutor
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="clvr-fused")
    return _POOLS[key]


def views(images, specs, rng: np.random.Generator, shared_crop: bool = False, threads: int = 0) -> list:
    """Views of a batch of decoded images: one float32 (B, 3, S, S) torch tensor per spec.

    ``specs`` is a list of ``(recipe, size)``, one per view. Views of the same size are made in
    one parallel call. With ``shared_crop`` every view takes the first view's crop box.
    ``threads`` caps the kernel's threads (0: numba's default, the CPU count).
    """
    import torch
    shapes = [im.shape for im in images]
    n = len(images)
    boxes = None
    params = []
    for recipe, size in specs:
        prm = draw(rng, recipe, shapes, size, boxes)
        if shared_crop and boxes is None:
            boxes = prm[:, P_Y:P_W + 1].copy()
        params.append(prm)
    out: list = [None] * len(specs)
    for size in sorted({s for _, s in specs}):
        which = [i for i, (_, s) in enumerate(specs) if s == size]
        made = render(images, np.concatenate([params[i] for i in which]), np.tile(np.arange(n), len(which)),
                      size, threads)
        for k, i in enumerate(which):
            out[i] = torch.from_numpy(made[k * n:(k + 1) * n])
    return out


def render(images, params: np.ndarray, owners: np.ndarray, size: int, threads: int = 0) -> np.ndarray:
    """Views (len(params), 3, size, size) float32; view ``i`` is of ``images[owners[i]]``.
    ``threads`` threads (0: the CPUs this process may use) each make a range of the views."""
    import os

    from numba.typed import List
    k = kernels()
    n = len(params)
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    typed = List()
    for im in images:                    # no copy: the kernel reads DALI's buffers
        typed.append(np.ascontiguousarray(im, dtype=np.uint8).reshape(im.shape[0], im.shape[1], 3))
    params = np.ascontiguousarray(params)
    owners = np.asarray(owners, np.int64)
    chunks = max(1, min(n, 2 * threads))
    bounds = [(c * n // chunks, (c + 1) * n // chunks) for c in range(chunks)]
    if threads == 1 or chunks == 1:
        k.render_range(typed, params, owners, out, 0, n)
    else:
        jobs = [_pool(threads).submit(k.render_range, typed, params, owners, out, a, b) for a, b in bounds]
        for j in jobs:
            j.result()
    return out

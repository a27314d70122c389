"""The augmentations of a :class:`~clvr.pipeline.recipe.Recipe`, as DALI graph nodes.

Every function takes and returns DALI ``DataNode`` s of HWC uint8 images (on the CPU or the GPU,
whichever the input is on) and draws its randomness per sample inside the graph, so the whole
view is made by DALI's worker threads. Each augmentation fires with its own probability. Ops
that fire rarely run under DALI conditionals, so the samples that skip them cost nothing.

Where the choice of implementation could change a recipe's statistics, it is said here:

- **colour jitter** is DALI's ``hsv`` (hue, saturation) then brightness and contrast (about the
  image's mean luma, as torchvision) in one arithmetic step. Without clipping, brightness, contrast
  and saturation commute, so torchvision's random order of them would change nothing; with
  clipping it does (e.g. 240 and 40 under brightness 1.3 then contrast 0.6 give 214 and 93 in
  torchvision's order, 255 and 104 here). The hue shift is a rotation of chroma in YIQ (luma
  kept) rather than a shift in HSV. The fused CPU kernel (:mod:`.fused_views`) follows
  torchvision exactly: random order, clamped after each op, hue in HSV.
- **grayscale** after jitter is folded into the same ``hsv`` op (saturation 0): desaturating
  commutes with the jitter above, so the result equals jitter-then-grayscale. DALI converts
  through YIQ with rounded matrices, so the three channels agree to within one grey level.
- **Gaussian blur** uses the recipe's kernel (``kernel`` x side, odd) but never more than
  ``2 * ceil(4 sigma) + 1`` taps: the taps beyond 4 sigma weigh under 1e-4 of the kernel, below
  half a grey level, so the output is the same to within one grey level (tested).
"""

from __future__ import annotations

import math

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from .recipe import Recipe

LUMA = (0.299, 0.587, 0.114)
SOBEL_SCALE = 1.0 / math.sqrt(2.0)


def coin(p: float):
    return fn.random.coin_flip(probability=float(p), dtype=types.BOOL)


def uniform(lo: float, hi: float):
    """A per-sample draw from [lo, hi]; a range with equal ends is that value."""
    if float(lo) == float(hi):
        return float(lo)
    return fn.random.uniform(range=[float(lo), float(hi)])


def crop(image, recipe: Recipe, size: tuple[int, int] | None = None):
    """Random resized crop to ``size`` (default the recipe's square); whole-image resize otherwise;
    the deterministic centre crop when ``crop.center`` > 0 (:func:`center_crop`)."""
    c = recipe.crop
    size = list(size or (recipe.size, recipe.size))
    interp = types.INTERP_LINEAR
    if c.center > 0:
        return center_crop(image, c.center, size, c.antialias)
    if c.p <= 0:
        return fn.resize(image, size=size, antialias=c.antialias, interp_type=interp)
    cropped = fn.random_resized_crop(image, size=size, random_area=list(c.scale),
                                     random_aspect_ratio=list(c.ratio), antialias=c.antialias,
                                     interp_type=interp, num_attempts=10)
    if c.p >= 1:
        return cropped
    whole = fn.resize(image, size=size, antialias=c.antialias, interp_type=interp)
    keep = fn.cast(coin(c.p), dtype=types.UINT8)
    return fn.cast(keep * cropped + (1 - keep) * whole, dtype=types.UINT8)


def center_crop(image, center: float, size, antialias: bool = True):
    """The centred box that is ``center`` x the largest box of the view's aspect in the image,
    resized to ``size`` (H, W). For a square view the box is the centre square of side
    ``center`` x the shorter side: ``center`` = 0.875 is the ImageNet evaluation view.

    HWC images or FHWC clips (every frame the same box). The box is in whole pixels, as the fused
    kernel's (:func:`.fused_views.center_boxes`, the same float64 arithmetic): sides rounded half
    up (at least 1 px), origin ``floor((H - h) / 2)``, ``floor((W - w) / 2)``. The box is cut
    out first and then resized (linear, the filter widened when shrinking if ``antialias``), so
    no pixel outside it reaches the view: a resize with a region of interest would let the
    filter read past the box's edges.
    """
    shape = image.shape(dtype=types.FLOAT64)         # on the CPU, also for GPU images
    height, width = shape[-3], shape[-2]
    aspect = types.Constant(float(size[1]) / float(size[0]), dtype=types.FLOAT64)
    frac = types.Constant(float(center), dtype=types.FLOAT64)
    full = dmath.min(height, width / aspect)         # height of the largest box of that aspect
    h = dmath.max(dmath.floor(frac * full + 0.5), 1.0)
    w = dmath.max(dmath.floor(frac * full * aspect + 0.5), 1.0)
    y = dmath.floor((height - h) * 0.5)
    x = dmath.floor((width - w) * 0.5)
    box = fn.slice(image, start=fn.cast(fn.stack(y, x), dtype=types.INT32),
                   shape=fn.cast(fn.stack(h, w), dtype=types.INT32), axis_names="HW")
    return fn.resize(box, size=[int(size[0]), int(size[1])], antialias=antialias,
                     interp_type=types.INTERP_LINEAR)


def rotate90(image, p: float):
    """Rotate by 90, 180 or 270 degrees with probability ``p`` (square views keep their size)."""
    if p <= 0:
        return image
    angle = fn.random.choice([90.0, 180.0, 270.0]) * fn.cast(coin(p), dtype=types.FLOAT)
    return fn.rotate(image, angle=angle, keep_size=True, interp_type=types.INTERP_NN)


def color(image, recipe: Recipe, video: bool = False):
    """Colour jitter (probability ``jitter.p``) and grayscale (``grayscale.p``) in two passes."""
    j, g = recipe.jitter, recipe.grayscale
    if j.p <= 0 and g.p <= 0:
        return image
    fire = fn.cast(coin(j.p), dtype=types.FLOAT) if j.p > 0 else 0.0

    def factor(x):
        if x <= 0 or j.p <= 0:
            return 1.0
        return 1.0 + fire * (uniform(max(0.0, 1.0 - x), 1.0 + x) - 1.0)

    saturation = factor(j.saturation)
    if g.p > 0:
        saturation = saturation * (1.0 - fn.cast(coin(g.p), dtype=types.FLOAT))
    hue = 0.0
    if j.p > 0 and j.hue > 0:
        hue = fire * uniform(-j.hue, j.hue) * 360.0
    out = image
    if (j.p > 0 and (j.hue > 0 or j.saturation > 0)) or g.p > 0:
        out = fn.hsv(out, hue=hue, saturation=saturation, dtype=types.UINT8)
    if j.p > 0 and (j.brightness > 0 or j.contrast > 0):
        # b * (m + c * (x - m)), m the mean luma: written as arithmetic rather than with
        # brightness_contrast's contrast_center, because on a GPU the mean is a GPU tensor, and
        # DALI operator arguments must live on the CPU. The cast saturates to 0..255 and rounds.
        m = mean_luma(out, video)
        b, c = factor(j.brightness), factor(j.contrast)
        out = fn.cast(b * (m + c * (fn.cast(out, dtype=types.FLOAT) - m)), dtype=types.UINT8)
    return out


def mean_luma(image, video: bool = False):
    """Per-sample mean ITU-R 601 luma (0-255) of an HWC image or (``video``) an FHWC clip."""
    means = fn.reductions.mean(fn.cast(image, dtype=types.FLOAT), axes=[0, 1, 2] if video else [0, 1])
    return means[0] * LUMA[0] + means[1] * LUMA[1] + means[2] * LUMA[2]


def gaussian_blur(image, recipe: Recipe, side: int):
    b = recipe.blur
    if b.p <= 0:
        return image
    sigma = uniform(*b.sigma)
    window = b.window(side)
    cap = 2 * int(math.ceil(4 * b.sigma[1])) + 1
    if cap < window:
        # Taps beyond 4 sigma weigh < 1e-4: trim them per sample (sigma is known in the graph).
        adaptive = fn.cast(2.0 * dmath.ceil(4.0 * sigma) + 1.0, dtype=types.INT32)
        window = dmath.min(adaptive, window)
    if b.p >= 1:
        return fn.gaussian_blur(image, sigma=sigma, window_size=window)
    if coin(b.p):
        image = fn.gaussian_blur(image, sigma=sigma, window_size=window)
    return image


def solarize(image, recipe: Recipe):
    s = recipe.solarize
    if s.p <= 0:
        return image
    table = [float(v if v < s.threshold else 255 - v) for v in range(256)]
    if coin(s.p):
        image = fn.lookup_table(image, keys=list(range(256)), values=table, dtype=types.UINT8)
    return image


def sobel(image, recipe: Recipe):
    if recipe.sobel.p <= 0:
        return image
    if coin(recipe.sobel.p):
        # One grey channel (DALI's grey image can differ by a level between channels).
        gray = fn.cast(fn.hsv(image, saturation=0.0, dtype=types.UINT8)[:, :, 0:1], dtype=types.FLOAT)
        kx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=np.float32)
        gx = fn.filter(gray, kx, border="clamp")
        gy = fn.filter(gray, np.ascontiguousarray(kx.T), border="clamp")
        # |G| / sqrt(2), saturated at 255: the gain that keeps photos' edges visible (the
        # largest possible |G| on 8-bit input is 4 * 255 * sqrt(2)).
        mag = dmath.min(dmath.sqrt(gx * gx + gy * gy) * SOBEL_SCALE, 255.0)
        image = fn.cat(*([fn.cast(mag, dtype=types.UINT8)] * 3), axis=2)
    return image


def noise(image, recipe: Recipe):
    n = recipe.noise
    if n.p <= 0:
        return image
    if coin(n.p):
        image = fn.noise.gaussian(image, stddev=uniform(*n.std))
    return image


def cutout(image, recipe: Recipe, side: int):
    c = recipe.cutout
    if c.p <= 0:
        return image
    if coin(c.p):
        # whole pixels, so the erased region is a square
        edge = dmath.floor(uniform(*c.size) * side + 0.5)
        anchor = dmath.floor(fn.stack(uniform(0.0, 1.0), uniform(0.0, 1.0)) * (side - edge + 1.0))
        image = fn.erase(image, anchor=anchor, shape=fn.stack(edge, edge), axis_names="HW",
                         fill_value=float(c.fill))
    return image


def normalize(image, recipe: Recipe, mirror=None, video: bool = False):
    """Scale to [0, 1], subtract mean, divide by std, and flip where ``mirror`` says; float CHW."""
    m = recipe.normalize
    return fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="FCHW" if video else "CHW",
                                    mean=[255.0 * v for v in m.mean], std=[255.0 * v for v in m.std],
                                    mirror=mirror if mirror is not None else 0)


def channel_drop(image, recipe: Recipe):
    """Keep one random channel of an HWC (or FHWC) uint8 image; the other two become the
    normalisation mean (so 0 after ``normalize``, to within half a grey level)."""
    if recipe.channel_drop.p <= 0:
        return image
    keep = fn.cast(fn.random.uniform(range=[0, 3], dtype=types.INT32), dtype=types.INT64)
    mask = fn.one_hot(keep, num_classes=3, dtype=types.FLOAT)           # (3,), broadcast on C
    fire = fn.cast(coin(recipe.channel_drop.p), dtype=types.FLOAT)
    mask = fire * mask + (1.0 - fire)
    mean = types.Constant(np.array([255.0 * m for m in recipe.normalize.mean], dtype=np.float32))
    return fn.cast(image * mask + (1.0 - mask) * mean, dtype=types.UINT8)   # cast rounds


def photometric(image, recipe: Recipe, side: int, video: bool = False):
    """Every photometric step of the recipe (uint8 HWC in and out), in :data:`recipe.ORDER`."""
    image = color(image, recipe, video)
    image = channel_drop(image, recipe)
    image = gaussian_blur(image, recipe, side)
    image = solarize(image, recipe)
    image = sobel(image, recipe)
    image = noise(image, recipe)
    return image


def view(image, recipe: Recipe, size: tuple[int, int] | None = None, photometric_in_graph: bool = True,
         video: bool = False):
    """One augmented view of a decoded image: float CHW normalised (or uint8 CHW when the
    photometric part is left to the kornia stage, see :mod:`clvr.pipeline.kornia_stage`)."""
    size = size or (recipe.size, recipe.size)
    return after_crop(crop(image, recipe, size), recipe, size, photometric_in_graph, video)


def after_crop(image, recipe: Recipe, size: tuple[int, int], photometric_in_graph: bool = True,
               video: bool = False):
    """Everything of the recipe but the crop, on an image already at ``size``."""
    out = rotate90(image, recipe.rotate.p)
    mirror = fn.random.coin_flip(probability=recipe.flip.p) if recipe.flip.p > 0 else None
    if not photometric_in_graph:      # the kornia stage does the photometric part and cutout
        return fn.crop_mirror_normalize(out, dtype=types.UINT8, output_layout="FCHW" if video else "CHW",
                                        mirror=mirror if mirror is not None else 0)
    out = photometric(out, recipe, min(size), video)
    out = cutout(out, recipe, min(size))
    return normalize(out, recipe, mirror, video)

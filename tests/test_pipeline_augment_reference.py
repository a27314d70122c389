"""Every augmentation against a float64 reference written from its formula.

The DALI ops of ``pipeline/augment.py`` run in tiny CPU pipelines (``device_id=None``) fed by
``fn.external_source``; the kornia stage runs on float tensors. The references below are plain
numpy float64, written from the definitions in ``recipe.py`` / ``augment.py`` (torchvision
semantics for the colour jitter), never by calling the code under test.

Random draws are made known without changing what is drawn: the ``draws`` fixture wraps the
module's ``uniform`` (DALI) or ``_uniform`` (kornia) so that every value drawn is also returned,
and, for DALI ops that fire under a DALI conditional (``if coin(p):``), lets ``coin(1.0)`` be a
plain ``True`` -- the branch is always taken at p = 1 anyway, and this keeps the drawn nodes in
the main trace so that the pipeline can return them.

Tolerances: DALI ops end in uint8, so one rounding costs up to half a grey level; every DALI
assertion allows one grey level (+-1) unless a comment says why more (DALI's hsv: 1.25 levels).
Kornia ops run in float32 on [0, 1] values: 1e-4 absolute (about 1/40 of a grey level), float32
round-off being ~1e-6.

The bugs these tests found in augment.py (Sobel kernels, equal-ended ranges, fractional cutout
edges, crop with a probability leaving int32, channel drop out of recipe order) are fixed, and
their tests now guard them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nvidia.dali import fn, pipeline_def

from clvr.pipeline import augment, kornia_stage
from clvr.pipeline import recipe as R
from conftest import linear_taps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LUMA = np.array([0.299, 0.587, 0.114])
MEAN = np.array(R.IMAGENET_MEAN)
STD = np.array(R.IMAGENET_STD)
GREY = 1.0        # one grey level: the uint8 rounding allowance of a DALI op
HALF = 0.5        # what one uint8 rounding can cost at most
# DALI's hsv works through YIQ with rounded matrices: before its rounding, its grey image is off
# the exact luma by up to 0.72 levels (blue channel, bright pixels; measured over the RGB cube),
# so one hsv pass is allowed HALF + YIQ_ERR = 1.25 levels against an exact reference.
YIQ_ERR = 0.75
HSV_TOL = HALF + YIQ_ERR
KTOL = 1e-4       # kornia stage, on [0, 1] values


# --------------------------------------------------------------------------- helpers


def recipe(**over) -> R.Recipe:
    """The "none" preset (resize, normalise, nothing else) with ``over`` applied."""
    return R.build({"base": "none", **over})[0]


def run(build, *batches, seed: int = 1, layout: str = "HWC"):
    """Run ``build(*nodes) -> node or tuple of nodes`` once in a CPU DALI pipeline fed with
    ``batches`` (lists of numpy arrays, one list per input); numpy outputs, [output][sample]."""
    n = len(batches[0])

    @pipeline_def(batch_size=n, num_threads=1, device_id=None, enable_conditionals=True, seed=seed)
    def pipe():
        nodes = [fn.external_source(source=constant(b), batch=True, layout=layout) for b in batches]
        out = build(*nodes)
        return tuple(out) if isinstance(out, (list, tuple)) else out

    p = pipe()
    p.build()
    outs = p.run()
    return [[np.array(t[i]) for i in range(n)] for t in outs]


def constant(batch):
    return lambda: batch          # no argument: DALI would pass the iteration number to one


class Draws:
    """Values drawn by ``augment.uniform`` while a graph is built: ``nodes`` in call order, keyed
    by their (lo, hi) range; :meth:`values` turns the pipeline's extra outputs into floats."""

    def __init__(self):
        self.ranges, self.nodes = [], []

    def values(self, outputs, start: int) -> list[tuple[tuple[float, float], np.ndarray]]:
        return [(rng, np.array([float(v) for v in outputs[start + k]]))
                for k, rng in enumerate(self.ranges)]


@pytest.fixture
def draws(monkeypatch):
    rec = Draws()
    real_uniform, real_coin = augment.uniform, augment.coin

    def uniform(lo, hi):
        node = real_uniform(lo, hi)
        rec.ranges.append((float(lo), float(hi)))
        rec.nodes.append(node)
        return node

    monkeypatch.setattr(augment, "uniform", uniform)
    rec.certain_coin = lambda: monkeypatch.setattr(
        augment, "coin", lambda p: True if p >= 1 else real_coin(p))
    return rec


def images(n, h, w, lo=0, hi=256, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(lo, hi, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def smooth_images(n, h, w, seed=0):
    """Colourful but smooth images (no channel near 0 or 255): jitter does not clip them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.2, 0.6, 3)
        img = np.stack([100 + 60 * np.sin(a * xx + 3 * c), 100 + 60 * np.cos(b * yy + c),
                        100 + 60 * np.sin(c * (xx + yy))], -1)
        out.append(np.round(img).astype(np.uint8))
    return out


# --------------------------------------------------------------------------- float64 references


def luma(x):
    return np.asarray(x, np.float64) @ LUMA


def ref_brightness_contrast(x, b, c):
    """torchvision: brightness multiplies, then contrast blends with the mean grey (luma) level."""
    y = np.clip(b * np.asarray(x, np.float64), 0, 255)
    return np.clip(c * y + (1 - c) * luma(y).mean(), 0, 255)


def ref_saturation(x, s):
    """torchvision: blend with the grey (luma) image."""
    x = np.asarray(x, np.float64)
    return np.clip(s * x + (1 - s) * luma(x)[..., None], 0, 255)


YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def ref_yiq(x, hue_deg, sat):
    """augment.py: hue is a rotation of the chroma (I, Q) in YIQ by ``hue_deg``, luma kept,
    saturation scales the chroma. Positive angles turn red towards yellow, as in HSV."""
    t = math.radians(hue_deg)
    rot = np.array([[1, 0, 0], [0, sat * math.cos(t), sat * math.sin(t)],
                    [0, -sat * math.sin(t), sat * math.cos(t)]])
    m = np.linalg.inv(YIQ) @ rot @ YIQ
    return np.clip(np.asarray(x, np.float64) @ m.T, 0, 255)


def rgb_to_hsv(x):
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    c = v - x.min(-1)
    s = np.where(v > 0, c / np.where(v > 0, v, 1), 0)
    cc = np.where(c > 0, c, 1)
    h = np.where(v == r, ((g - b) / cc) % 6, np.where(v == g, (b - r) / cc + 2, (r - g) / cc + 4))
    return np.stack([np.where(c > 0, h / 6, 0), s, v], -1)


def hsv_to_rgb(hsv):
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros(h.shape + (3,))
    for k, rgb in enumerate(table):
        out[i == k] = np.stack(rgb, -1)[i == k]
    return out


def ref_hue_hsv(x01, turns):
    """torchvision: shift the HSV hue by ``turns`` (x in [0, 1], HWC)."""
    hsv = rgb_to_hsv(np.asarray(x01, np.float64))
    hsv[..., 0] = (hsv[..., 0] + turns) % 1.0
    return hsv_to_rgb(hsv)


def gauss_taps(sigma, window):
    r = np.arange(window) - window // 2
    k = np.exp(-r ** 2 / (2.0 * sigma ** 2))
    return k / k.sum()


def ref_blur(x, sigma, window, mode="reflect"):
    """Separable normalised Gaussian; numpy's "reflect" is reflect-101 (the edge not repeated),
    DALI's default border for gaussian_blur and torch's "reflect" padding."""
    k, p = gauss_taps(sigma, window), window // 2
    y = np.asarray(x, np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * y.ndim
        pad[axis] = (p, p)
        z = np.pad(y, pad, mode=mode)
        n = y.shape[axis]
        y = sum(k[i] * np.take(z, range(i, i + n), axis=axis) for i in range(window))
    return y


SOBEL_GAIN = 4.0   # augment.py / kornia_stage.py multiply the scaled magnitude by 4 (saturating)


def ref_sobel(gray, top=255.0, gain=SOBEL_GAIN):
    """Sobel magnitude of the luma, border replicated ("clamp"), scaled so that the largest
    possible magnitude (4 * top * sqrt 2) maps to ``top``, times ``gain``, saturated at ``top``."""
    g = np.pad(np.asarray(gray, np.float64), 1, mode="edge")
    h, w = gray.shape
    s = lambda dy, dx: g[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # noqa: E731
    gx = s(-1, 1) + 2 * s(0, 1) + s(1, 1) - s(-1, -1) - 2 * s(0, -1) - s(1, -1)
    gy = s(1, -1) + 2 * s(1, 0) + s(1, 1) - s(-1, -1) - 2 * s(-1, 0) - s(-1, 1)
    return np.minimum(top, gain * np.hypot(gx, gy) * top / (4 * top * math.sqrt(2)))


def triangle_weights(n_in, n_out, border="clamp"):
    """Rows of a linear (triangle) resampling filter from ``n_in`` to ``n_out`` pixels, widened by
    the shrink factor when shrinking (antialias). ``border="clamp"`` replicates the edge pixels
    (DALI); ``"renormalise"`` drops the taps outside and renormalises (PIL)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    out = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        js = np.arange(math.floor(centre - support) - 1, math.ceil(centre + support) + 2)
        wts = np.maximum(0.0, 1.0 - np.abs((js + 0.5 - centre) / support))
        if border == "renormalise":
            keep = (js >= 0) & (js < n_in)
            js, wts = js[keep], wts[keep]
        wts = wts / wts.sum()
        for j, wt in zip(np.clip(js, 0, n_in - 1), wts):
            out[i, j] += wt
    return out


def ref_resize(x, h, w, border="clamp", antialias=True):
    a = triangle_weights(x.shape[0], h, border) if antialias or h >= x.shape[0] else \
        linear_taps(x.shape[0], h)
    b = triangle_weights(x.shape[1], w, border) if antialias or w >= x.shape[1] else \
        linear_taps(x.shape[1], w)
    return np.einsum("ij,jkc,lk->ilc", a, np.asarray(x, np.float64), b, optimize=True)


def assert_grey(got, want, tol=GREY, what=""):
    d = np.abs(np.asarray(got, np.float64) - want)
    assert d.max() <= tol + 1e-9, f"{what}: off by {d.max():.3f} grey levels (allowed {tol})"


# =========================================================================== DALI: colour


def test_dali_brightness_contrast_is_torchvision(draws):
    r = recipe(jitter={"p": 1.0, "brightness": 0.3, "contrast": 0.5, "saturation": 0.0, "hue": 0.0})
    xs = smooth_images(6, 10, 12)
    outs = run(lambda x: (augment.color(x, r),) + tuple(draws.nodes), xs)
    got = dict(draws.values(outs, 1))
    bright, contrast = got[(0.7, 1.3)], got[(0.5, 1.5)]
    assert len(draws.ranges) == 2, "brightness and contrast only: one draw each"
    assert len(set(bright)) == 6 and len(set(contrast)) == 6, "one draw per sample"
    worst_wrong = 0.0
    for x, y, b, c in zip(xs, outs[0], bright, contrast):
        assert y.dtype == np.uint8
        # one uint8 rounding (brightness_contrast), +-1 grey level
        assert_grey(y, ref_brightness_contrast(x, b, c), what=f"b={b:.3f} c={c:.3f}")
        worst_wrong = max(worst_wrong, np.abs(y - ref_brightness_contrast(x, b + 0.05, c)).max())
    assert worst_wrong > 2 * GREY, "a brightness 0.05 off must exceed the tolerance"


def test_dali_contrast_blends_with_the_mean_luma_not_the_channel_means(draws):
    # A strongly coloured image: the mean luma differs from each channel's mean, so a contrast
    # taken about the wrong centre shows.
    r = recipe(jitter={"p": 1.0, "brightness": 0.0, "contrast": 0.6, "saturation": 0.0, "hue": 0.0})
    x = np.zeros((8, 8, 3), np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 200, 60, 120
    x[:4] //= 2
    outs = run(lambda n: (augment.color(n, r),) + tuple(draws.nodes), [x, x.copy()])
    (_, c), = draws.values(outs, 1)
    for y, ci in zip(outs[0], c):
        assert_grey(y, ref_brightness_contrast(x, 1.0, ci), what="contrast about the mean luma")
        per_channel = np.clip(ci * x + (1 - ci) * x.reshape(-1, 3).mean(0), 0, 255)
        if abs(ci - 1) > 0.1:
            assert np.abs(y - per_channel).max() > 2 * GREY


def test_dali_saturation_blends_with_the_grey_image(draws):
    r = recipe(jitter={"p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.6, "hue": 0.0})
    xs = smooth_images(5, 9, 11, seed=1)
    outs = run(lambda x: (augment.color(x, r),) + tuple(draws.nodes), xs)
    (rng, s), = draws.values(outs, 1)
    assert rng == (0.4, 1.6) and np.all((s >= 0.4) & (s < 1.6))
    for x, y, si in zip(xs, outs[0], s):
        # one uint8 rounding + DALI's rounded YIQ matrices (documented): HSV_TOL = 1.25 levels
        assert_grey(y, ref_saturation(x, si), tol=HSV_TOL, what=f"saturation {si:.3f}")
        assert np.abs(y - ref_saturation(x, si + 0.1)).max() > 2 * HSV_TOL


def test_dali_hue_is_a_yiq_rotation_towards_yellow_for_positive_angles(draws):
    r = recipe(jitter={"p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.5, "hue": 0.25})
    xs = smooth_images(6, 9, 11, seed=2)
    outs = run(lambda x: (augment.color(x, r),) + tuple(draws.nodes), xs)
    got = dict(draws.values(outs, 1))
    s, turns = got[(0.5, 1.5)], got[(-0.25, 0.25)]
    assert (turns < 0).any() and (turns > 0).any()
    for x, y, si, t in zip(xs, outs[0], s, turns):
        # one uint8 rounding with rounded YIQ matrices: HSV_TOL = 1.25 levels
        assert_grey(y, ref_yiq(x, 360.0 * t, si), tol=HSV_TOL, what=f"hue {t:.3f} turns, saturation {si:.3f}")
        assert np.abs(y - ref_yiq(x, -360.0 * t, si)).max() > 2 * HSV_TOL, "the sign of the turn matters"
        # luma is kept by the rotation and the saturation (to rounding; + clipping of the reference)
        assert np.abs(luma(y) - luma(x)).mean() < GREY


def test_dali_hue_direction_matches_hsv():
    # The references' sign conventions: pure red turned by a small positive angle gains green
    # (towards yellow) and not blue, in YIQ as in HSV; the DALI test above matches +angle only.
    red = ref_yiq(np.array([[255, 0, 0]]), 20.0, 1.0)[0]
    assert red[1] > red[2]
    h = ref_hue_hsv(np.array([[1.0, 0.0, 0.0]]), 20 / 360)
    assert h[0, 1] > 0 and h[0, 2] == 0


def test_dali_grayscale_is_601_luma_within_one_grey_level():
    r = recipe(grayscale={"p": 1.0})
    xs = images(4, 10, 13, seed=3)
    (ys,) = run(lambda x: augment.color(x, r), xs)
    for x, y in zip(xs, ys):
        want = np.repeat(luma(x)[..., None], 3, -1)
        # documented: DALI converts through YIQ with rounded matrices, so the output is within
        # one grey level of the correctly rounded luma (exact luma: HSV_TOL, see YIQ_ERR)
        assert np.abs(y - np.floor(want + 0.5)).max() <= GREY, "within one level of round(luma)"
        assert_grey(y, want, tol=HSV_TOL, what="grayscale")
        assert np.abs(y.astype(int) - y[..., :1]).max() <= 1, "the three channels agree to 1 level"
        equal_weights = np.repeat(np.asarray(x, float).mean(-1, keepdims=True), 3, -1)
        assert np.abs(y - equal_weights).max() > 2 * HSV_TOL, "wrong weights must be caught"


def test_dali_jitter_then_grayscale_is_folded_exactly(draws):
    # grayscale inside the hsv pass (saturation 0), then brightness/contrast on the grey image:
    # documented to equal jitter-then-grayscale. Reference: luma of the jittered image, which is
    # b * (m + c * (Y - m)) (saturation and the YIQ hue rotation keep the luma Y).
    r = recipe(jitter={"p": 1.0, "brightness": 0.2, "contrast": 0.3, "saturation": 0.4, "hue": 0.1},
               grayscale={"p": 1.0})
    xs = smooth_images(5, 8, 10, seed=4)
    outs = run(lambda x: (augment.color(x, r),) + tuple(draws.nodes), xs)
    got = dict(draws.values(outs, 1))
    b, c = got[(0.8, 1.2)], got[(0.7, 1.3)]
    visible = 0
    for x, y, bi, ci in zip(xs, outs[0], b, c):
        lum = luma(x)
        want = np.clip(bi * (lum.mean() + ci * (lum - lum.mean())), 0, 255)
        # Two uint8 roundings: the grey image (HSV_TOL off) is scaled by b*c <= 1.56, then the
        # output is rounded: HALF + b*c*HSV_TOL <= 2.45 levels.
        assert_grey(y, np.repeat(want[..., None], 3, -1), tol=HALF + bi * ci * HSV_TOL, what="jitter + gray")
        if abs(bi - 1) + abs(ci - 1) > 0.1:       # a visible draw: the jitter must still apply
            assert np.abs(y - np.repeat(lum[..., None], 3, -1)).max() > 3, "the jitter must still apply"
            visible += 1
    assert visible >= 2


def test_dali_full_jitter_equals_the_composition(draws):
    r = recipe(jitter={"p": 1.0, "brightness": 0.2, "contrast": 0.2, "saturation": 0.5, "hue": 0.1})
    xs = smooth_images(5, 8, 10, seed=5)
    outs = run(lambda x: (augment.color(x, r),) + tuple(draws.nodes), xs)
    got = dict(draws.values(outs, 1))
    assert set(got) == {(0.8, 1.2), (0.5, 1.5), (-0.1, 0.1)} and len(draws.ranges) == 4
    # call order in augment.color: saturation, hue, brightness, contrast
    (_, s), (_, t), (_, b), (_, c) = draws.values(outs, 1)
    for x, y, si, ti, bi, ci in zip(xs, outs[0], s, t, b, c):
        want = ref_brightness_contrast(ref_yiq(x, 360 * ti, si), bi, ci)
        # Two uint8 roundings: the hsv pass (HSV_TOL) scaled by b*c <= 1.44, then HALF: <= 2.3
        assert_grey(y, want, tol=HALF + bi * ci * HSV_TOL, what="full jitter")
        assert np.abs(y - ref_brightness_contrast(ref_yiq(x, 360 * ti, si), bi, ci + 0.1)).max() > 3


# =========================================================================== DALI: blur .. noise


def test_dali_gaussian_blur_is_a_reflect101_separable_gaussian(draws):
    # side 20, kernel 0.35 -> a 7-tap window; sigma up to 1.6 -> cap 2*ceil(6.4)+1 = 15: untrimmed
    r = recipe(blur={"p": 1.0, "sigma": [0.5, 1.6], "kernel": 0.35})
    assert R.Blur(kernel=0.35).window(20) == 7
    xs = images(6, 20, 20, seed=6)
    outs = run(lambda x: (augment.gaussian_blur(x, r, 20),) + tuple(draws.nodes), xs)
    (_, sig), = draws.values(outs, 1)
    for x, y, s in zip(xs, outs[0], sig):
        assert_grey(y, ref_blur(x, s, 7), what=f"sigma {s:.3f}")      # one uint8 rounding
        assert np.abs(y - ref_blur(x, s, 7, mode="symmetric")).max() > 2 * GREY, "border rule"
        assert np.abs(y - ref_blur(x, s * 1.15, 7)).max() > 2 * GREY, "sigma"


def test_dali_gaussian_blur_trimmed_to_4_sigma_stays_within_one_grey_level(draws):
    # side 24, kernel 0.9 -> window 23 (larger than the 4-sigma cap 2*ceil(4*1.2)+1 = 11): the
    # taps are trimmed per sample; documented to match the full window within one grey level.
    r = recipe(blur={"p": 1.0, "sigma": [0.4, 1.2], "kernel": 0.9})
    xs = images(6, 24, 24, seed=7)
    outs = run(lambda x: (augment.gaussian_blur(x, r, 24),) + tuple(draws.nodes), xs)
    (_, sig), = draws.values(outs, 1)
    for x, y, s in zip(xs, outs[0], sig):
        assert_grey(y, ref_blur(x, s, 23), what=f"sigma {s:.3f}, trimmed window")


def test_dali_solarize_inverts_at_and_above_the_threshold():
    r = recipe(solarize={"p": 1.0, "threshold": 100})
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = np.stack([ramp, ramp.T, 255 - ramp], -1)
    (ys,) = run(lambda n: augment.solarize(n, r), [x])
    xi = x.astype(int)
    want = np.where(xi >= 100, 255 - xi, xi)       # integer table: exact, no rounding
    assert np.array_equal(ys[0], want)
    assert not np.array_equal(ys[0], np.where(xi > 100, 255 - xi, xi)), "the threshold is inclusive"


def test_dali_sobel_is_the_scaled_luma_gradient_magnitude():
    r = recipe(sobel={"p": 1.0})
    rng = np.random.default_rng(8)
    g = rng.integers(0, 256, (10, 12)).astype(np.uint8)
    g[:, 6:] = g[:, 6:] // 4 + 180                  # a strong edge, saturating the output
    grey = np.repeat(g[..., None], 3, -1)           # R = G = B: the luma is exact
    (ys,) = run(lambda n: augment.sobel(n, r), [grey])
    want = ref_sobel(g)
    assert (want == 255).any() and (want < 200).any()
    y = ys[0]
    assert np.array_equal(y[..., 0], y[..., 1]) and np.array_equal(y[..., 0], y[..., 2]), \
        "one magnitude on all three channels (DALI's grey image has a blue channel 1 level off)"
    assert_grey(y[..., 0], want, what="sobel")                            # one uint8 rounding
    assert np.abs(ys[0][..., 0] - ref_sobel(g, gain=1.0)).max() > 2 * GREY


def test_dali_noise_statistics_and_per_sample_std(draws):
    draws.certain_coin()
    r = recipe(noise={"p": 1.0, "std": [4.0, 20.0]})
    xs = [np.full((48, 48, 3), 128, np.uint8) for _ in range(4)]
    outs = run(lambda x: (augment.noise(x, r),) + tuple(draws.nodes), xs)
    (_, std), = draws.values(outs, 1)
    for y, s in zip(outs[0], std):
        e = y.astype(np.float64) - 128
        n = e.size                                             # 6912 values per sample
        # mean 0: 5 standard errors; std: rounding adds 1/12 to the variance; 5% covers the
        # sampling error of a std over 6912 values (~0.9%) with room
        assert abs(e.mean()) < 5 * s / math.sqrt(n)
        assert abs(e.std() - math.sqrt(s * s + 1 / 12)) < 0.05 * s
        assert abs(e.std() - 1.2 * s) > 0.05 * s


def test_dali_noise_saturates_instead_of_wrapping():
    r = recipe(noise={"p": 1.0, "std": [9.99, 10.01]})
    xs = [np.full((64, 64, 3), 250, np.uint8), np.full((64, 64, 3), 5, np.uint8)]
    (ys,) = run(lambda x: augment.noise(x, r), xs)
    hi, lo = ys[0].astype(int), ys[1].astype(int)
    # x + N(0, 10) rounded and clipped: P(out = 255) = P(N >= 4.5) = 0.326, P(out = 0) = P(N < -4.5)
    share = 0.5 * math.erfc(4.5 / (10 * math.sqrt(2)))
    assert abs((hi == 255).mean() - share) < 0.03 and abs((lo == 0).mean() - share) < 0.03
    assert hi.min() >= 250 - 60 and lo.max() <= 5 + 60, "wrapped values would land at the far end"


def test_dali_cutout_erases_one_fill_region_and_keeps_the_rest(draws):
    draws.certain_coin()
    side = 16
    r = recipe(cutout={"p": 1.0, "size": [0.2, 0.45], "fill": 7})
    xs = images(8, side, side, lo=10, seed=9)                       # no pixel equals the fill
    outs = run(lambda x: (augment.cutout(x, r, side),) + tuple(draws.nodes), xs)
    (_, size), (_, u_top), (_, u_left) = draws.values(outs, 1)
    for x, y, s, ut, ul in zip(xs, outs[0], size, u_top, u_left):
        edge = math.floor(s * side + 0.5)                  # whole pixels: a square
        top, left = ut * (side - edge + 1), ul * (side - edge + 1)
        changed = np.any(y != x, -1)
        ys_, xs_ = np.nonzero(changed)
        assert (y[changed] == 7).all() and np.array_equal(y[~changed], x[~changed])
        box = (ys_.min(), ys_.max() + 1, xs_.min(), xs_.max() + 1)
        assert changed[box[0]:box[1], box[2]:box[3]].all(), "one filled rectangle"
        # pixel rows/columns covered by [top, top + edge) and [left, left + edge)
        assert box[0] == math.floor(top) and box[2] == math.floor(left)
        assert box[1] - box[0] == edge and box[3] - box[2] == edge


def test_dali_cutout_is_a_square(draws):
    draws.certain_coin()
    side = 16
    r = recipe(cutout={"p": 1.0, "size": [0.2, 0.45], "fill": 7})
    xs = images(8, side, side, lo=10, seed=9)
    (ys,) = run(lambda x: augment.cutout(x, r, side), xs)
    for x, y in zip(xs, ys):
        rows, cols = np.nonzero(np.any(y != x, -1))
        assert rows.max() - rows.min() == cols.max() - cols.min(), "recipe: 'erase one square'"


def test_dali_degenerate_range_draws_its_single_value():
    r = recipe(noise={"p": 1.0, "std": [10.0, 10.0]})
    xs = [np.full((32, 32, 3), 128, np.uint8)]
    (ys,) = run(lambda x: augment.noise(x, r), xs)
    assert abs((ys[0].astype(float) - 128).std() - 10.0) < 0.5


# =========================================================================== DALI: geometry


@pytest.mark.parametrize("side", [8, 9])
def test_dali_rotate90_is_an_exact_quarter_turn(side):
    xs = images(24, side, side, seed=10)
    (ys,) = run(lambda x: augment.rotate90(x, 1.0), xs)
    turns = []
    for x, y in zip(xs, ys):
        k = [k for k in (1, 2, 3) if np.array_equal(y, np.rot90(x, k))]   # nearest neighbour: exact
        assert len(k) == 1, "each output is x turned by 90, 180 or 270 degrees"
        turns.append(k[0])
    assert set(turns) == {1, 2, 3}, "the three angles are all drawn"
    (same,) = run(lambda x: augment.rotate90(x, 0.0), xs[:2])
    assert all(np.array_equal(a, b) for a, b in zip(same, xs[:2]))
    (half,) = run(lambda x: augment.rotate90(x, 0.5), xs)
    kept = [np.array_equal(a, b) for a, b in zip(half, xs)]
    assert 0 < sum(kept) < len(xs), "p = 0.5: some kept (angle 0 is exact), some turned"
    assert all(k or any(np.array_equal(a, np.rot90(b, t)) for t in (1, 2, 3))
               for k, a, b in zip(kept, half, xs))


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_dali_flip_and_normalize(flip):
    r = recipe(flip={"p": flip})
    xs = images(3, 6, 7, seed=11)
    (ys,) = run(lambda x: augment.after_crop(x, r, (6, 7)), xs)
    for x, y in zip(xs, ys):
        src = x[:, ::-1] if flip else x
        want = ((src / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        assert y.shape == (3, 6, 7) and y.dtype == np.float32
        np.testing.assert_allclose(y, want, atol=1e-5)               # float32, no uint8 rounding
        wrong = ((x[:, ::-1] if not flip else x) / 255.0 - MEAN) / STD
        assert np.abs(y - wrong.transpose(2, 0, 1)).max() > 0.1


def test_dali_channel_drop_keeps_one_normalised_channel():
    """Dropped channels become the mean in 8 bits (round(255 * mean)): 0 once normalised, to
    within half a grey level."""
    r = recipe(channel_drop={"p": 1.0})
    xs = images(24, 5, 6, lo=1, seed=12)
    (ys,) = run(lambda x: augment.after_crop(x, r, (5, 6)), xs)
    kept = []
    half_level = 0.5 / 255.0 / STD
    for x, y in zip(xs, ys):
        full = ((x / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        dropped = ((np.round(255.0 * MEAN) / 255.0 - MEAN) / STD)
        alive = [c for c in range(3) if not np.allclose(y[c], dropped[c], atol=1e-6)]
        assert len(alive) == 1, "two channels become the mean"
        for c in set(range(3)) - set(alive):
            assert abs(dropped[c]) <= half_level[c]
        np.testing.assert_allclose(y[alive[0]], full[alive[0]], atol=1e-5)
        kept.append(alive[0])
    assert set(kept) == {0, 1, 2}


def test_dali_crop_with_a_probability_keeps_uint8():
    r = recipe(crop={"p": 0.5})
    (ys,) = run(lambda x: augment.crop(x, r, (8, 8)), images(4, 20, 30, seed=14))
    assert ys[0].dtype == np.uint8, "augment.py: every function returns HWC uint8"


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("out", [(16, 24), (12, 18), (64, 96)])
def test_dali_whole_image_crop_is_a_triangle_resize(out, antialias):
    """Scale [1, 1] and ratio [W/H, W/H]: the crop window is the whole image, so the output is a
    linear resize, antialiased (the triangle widened by the shrink factor) when shrinking.

    The reference replicates the border pixels, as DALI does: then +-1 grey level (one uint8
    rounding) holds everywhere. PIL's antialias instead renormalises the taps that fall outside
    the image, which moves the border pixels by up to ~13 grey levels on noise; that comparison
    is only loose (interior pixels +-1), and is made too, to show where the two differ.
    """
    h, w = 32, 48
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 5, yy * 7, 128 + 60 * np.sin(xx / 4.0) * np.cos(yy / 5.0)], -1)
    xs = [np.clip(smooth, 0, 255).astype(np.uint8), images(1, h, w, seed=13)[0]]
    for p in (1.0, 0.0):          # random resized crop, and the whole-image resize of p = 0
        r = recipe(crop={"p": p, "scale": [1.0, 1.0], "ratio": [1.5, 1.5], "antialias": antialias})
        (ys,) = run(lambda x: augment.crop(x, r, out), xs)
        for x, y in zip(xs, ys):
            assert y.shape == out + (3,)
            assert_grey(y, ref_resize(x, *out, antialias=antialias), what=f"p={p} {out}")
            pil = ref_resize(x, *out, border="renormalise", antialias=antialias)
            assert_grey(y[1:-1, 1:-1], pil[1:-1, 1:-1], what="interior vs PIL's border rule")
    if antialias and out[0] < h:
        noisy = ys[1]
        assert np.abs(noisy - ref_resize(xs[1], *out, antialias=False)).max() > 5, "antialias shows"


def test_dali_random_resized_crop_windows_follow_the_recipe():
    """A coordinate-coded image (red = x, green = y) is cropped without antialias: a linear ramp
    stays linear under linear interpolation, so the first and last output columns/rows give each
    window's left/top edge and width/height (to the uint8 rounding, averaged over 16 reads)."""
    h, w = 150, 200
    r = recipe(crop={"p": 1.0, "scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3], "antialias": False})
    area, aspect = crop_windows(r, h, w, 240)
    # +-1 px on sides of >= 50 px: 4% on the area, 4% on the ratio
    assert area.min() >= 0.08 * 0.96 and area.max() <= 1.0 * 1.04
    assert aspect.min() >= 0.75 * 0.96 and aspect.max() <= 4 / 3 * 1.04
    # the ranges are used, not a corner of them
    assert area.min() < 0.15 and area.max() > 0.8
    assert aspect.min() < 0.8 and aspect.max() > 1.25


def test_dali_random_resized_crop_area_uniform_ratio_log_uniform():
    # Small areas and a wide ratio range on a square image: every draw fits, so no rejection
    # skews the draws (large windows of a 4:3 image can only be wide). log(ratio) is uniform on
    # [-log 4, log 4] (mean 0, sd 0.80; a ratio uniform on [1/4, 4] would have mean log 0.58);
    # the area fraction is uniform on [0.02, 0.1] (mean 0.06, sd 0.023). 200 draws: 4 standard
    # errors are 0.23 and 0.0065.
    r = recipe(crop={"p": 1.0, "scale": [0.02, 0.1], "ratio": [0.25, 4.0], "antialias": False})
    area, aspect = crop_windows(r, 200, 200, 200)
    assert abs(np.log(aspect).mean()) < 0.23
    assert abs(area.mean() - 0.06) < 0.0065
    assert np.log(aspect).min() < -1.0 and np.log(aspect).max() > 1.0


def crop_windows(r, h, w, n, s=16):
    """(area fraction, aspect w/h) of the windows of ``n`` crops of an h x w image coded with
    red = x, green = y (read without antialias: a ramp stays a ramp under linear interpolation)."""
    yy, xx = np.mgrid[0:h, 0:w]
    coded = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    (ys,) = run(lambda x: augment.crop(x, r, (s, s)), [coded] * n, seed=5)
    area, aspect = [], []
    for y in ys:
        y = y.astype(np.float64)
        # output pixel i samples x0 + (i + 0.5) * cw / s - 0.5
        cw = (y[:, -1, 0].mean() - y[:, 0, 0].mean()) * s / (s - 1)
        ch = (y[-1, :, 1].mean() - y[0, :, 1].mean()) * s / (s - 1)
        x0 = y[:, 0, 0].mean() + 0.5 - 0.5 * cw / s
        y0 = y[0, :, 1].mean() + 0.5 - 0.5 * ch / s
        assert -1 <= x0 and x0 + cw <= w + 1 and -1 <= y0 and y0 + ch <= h + 1, "window inside"
        area.append(cw * ch / (w * h))
        aspect.append(cw / ch)
    return np.array(area), np.array(aspect)


def order_views(noise_std=(20.0, 30.0)):
    """A mid-grey batch and a recipe of channel drop and noise (recipe.ORDER: channel_drop, ...,
    noise): the dropped channels become the mean grey and then get their noise."""
    assert R.ORDER.index("channel_drop") < R.ORDER.index("noise")
    r = recipe(channel_drop={"p": 1.0}, noise={"p": 1.0, "std": list(noise_std)})
    return r, [np.full((16, 16, 3), 128, np.uint8) for _ in range(4)]


def assert_every_channel_noisy(views, low_std):
    for v in views:
        for c in range(3):
            # noise of sd >= 20 levels on every channel, normalised by its std
            assert np.asarray(v[c], np.float64).std() > 0.5 * low_std / 255 / STD[c], \
                "recipe.ORDER: channel drop comes before noise, so no channel is noise-free"


def test_dali_channel_drop_happens_in_recipe_order():
    r, xs = order_views()
    (ys,) = run(lambda x: augment.after_crop(x, r, (16, 16)), xs)
    assert_every_channel_noisy(ys, 20.0)


def test_kornia_channel_drop_happens_in_recipe_order():
    r, xs = order_views()
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    y = kornia_stage.apply_recipe(x, r, torch.Generator().manual_seed(0))
    assert_every_channel_noisy(y.double().numpy(), 20.0)


# =========================================================================== kornia stage


@pytest.fixture
def kdraws(monkeypatch):
    """Every ``kornia_stage._uniform`` draw, as ((lo, hi), per-image tensor), in call order."""
    rec = []
    real = kornia_stage._uniform

    def uniform(x, lo, hi, gen, group):
        u = real(x, lo, hi, gen, group)
        rec.append(((float(lo), float(hi)), u.clone()))
        return u

    monkeypatch.setattr(kornia_stage, "_uniform", uniform)
    return rec


def unit_images(n, h, w, seed=0, lo=0.05, hi=0.95):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g, dtype=torch.float64).float() * (hi - lo) + lo


def hwc(t):
    return t.detach().double().permute(0, 2, 3, 1).numpy()


def drawn(rec, rng):
    vals = [u for k, u in rec if k == rng]
    assert len(vals) == 1, f"one draw of range {rng}"
    return vals[0].double().numpy()


def jitter(**over):
    j = {"p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    return recipe(jitter={**j, **over})


def test_kornia_brightness_multiplies(kdraws):
    x = unit_images(6, 7, 9, hi=0.7)                 # 0.7 * 1.3 < 1: nothing clips
    y = kornia_stage.color_jitter(x, jitter(brightness=0.3), torch.Generator().manual_seed(0))
    b = drawn(kdraws, (0.7, 1.3))
    want = np.clip(b[:, None, None, None] * hwc(x), 0, 1)
    np.testing.assert_allclose(hwc(y), want, atol=KTOL)
    assert np.abs(hwc(y) - np.clip(hwc(x) + (b[:, None, None, None] - 1), 0, 1)).max() > 0.01


def test_kornia_contrast_blends_with_the_mean_luma(kdraws):
    x = unit_images(6, 7, 9, seed=1)
    y = kornia_stage.color_jitter(x, jitter(contrast=0.5), torch.Generator().manual_seed(0))
    c = drawn(kdraws, (0.5, 1.5))
    for xi, yi, ci in zip(hwc(x), hwc(y), c):
        want = np.clip(ci * xi + (1 - ci) * luma(xi).mean(), 0, 1)
        np.testing.assert_allclose(yi, want, atol=KTOL)


def test_kornia_saturation_blends_with_the_grey_image(kdraws):
    x = unit_images(6, 7, 9, seed=2)
    y = kornia_stage.color_jitter(x, jitter(saturation=0.6), torch.Generator().manual_seed(0))
    s = drawn(kdraws, (0.4, 1.6))
    for xi, yi, si in zip(hwc(x), hwc(y), s):
        want = np.clip(si * xi + (1 - si) * luma(xi)[..., None], 0, 1)
        np.testing.assert_allclose(yi, want, atol=KTOL)


def test_kornia_hue_shifts_the_hsv_hue(kdraws):
    x = unit_images(6, 7, 9, seed=3)
    y = kornia_stage.color_jitter(x, jitter(hue=0.3), torch.Generator().manual_seed(0))
    t = drawn(kdraws, (-0.3, 0.3))
    for xi, yi, ti in zip(hwc(x), hwc(y), t):
        np.testing.assert_allclose(yi, ref_hue_hsv(xi, ti), atol=KTOL)
        assert np.abs(yi - ref_hue_hsv(xi, -ti)).max() > 0.01


def test_kornia_brightness_contrast_saturation_in_any_order(kdraws):
    # Without clipping the three commute, so the stage's random order must not matter.
    x = unit_images(6, 7, 9, seed=4, lo=0.35, hi=0.6)
    y = kornia_stage.color_jitter(x, jitter(brightness=0.2, contrast=0.3, saturation=0.4),
                                  torch.Generator().manual_seed(1))
    b, c, s = drawn(kdraws, (0.8, 1.2)), drawn(kdraws, (0.7, 1.3)), drawn(kdraws, (0.6, 1.4))
    for xi, yi, bi, ci, si in zip(hwc(x), hwc(y), b, c, s):
        z = bi * xi
        z = ci * z + (1 - ci) * luma(z).mean()
        z = si * z + (1 - si) * luma(z)[..., None]
        assert z.min() > 0 and z.max() < 1
        np.testing.assert_allclose(yi, z, atol=KTOL)


def test_kornia_jitter_fires_with_its_probability(kdraws):
    x = unit_images(400, 2, 2, seed=5)
    y = kornia_stage.color_jitter(x, jitter(p=0.3, brightness=0.5), torch.Generator().manual_seed(2))
    fired = (y != x).flatten(1).any(1).double().mean().item()
    assert abs(fired - 0.3) < 0.08                      # 3.5 standard errors over 400 draws


def test_kornia_grayscale_is_601_luma():
    x = unit_images(4, 6, 8, seed=6)
    y = kornia_stage.grayscale(x, recipe(grayscale={"p": 1.0}), torch.Generator().manual_seed(0))
    want = np.repeat(luma(hwc(x))[..., None], 3, -1)
    np.testing.assert_allclose(hwc(y), want, atol=KTOL)


def test_kornia_gaussian_blur(kdraws):
    r = recipe(blur={"p": 1.0, "sigma": [0.5, 2.0], "kernel": 0.35})   # side 20 -> 7 taps
    x = unit_images(5, 20, 20, seed=7)
    y = kornia_stage.gaussian_blur(x, r, torch.Generator().manual_seed(0))
    sig = drawn(kdraws, (0.5, 2.0))
    for xi, yi, s in zip(hwc(x), hwc(y), sig):
        np.testing.assert_allclose(yi, ref_blur(xi, s, 7), atol=KTOL)
        assert np.abs(yi - ref_blur(xi, s, 7, mode="symmetric")).max() > 0.01


def test_kornia_solarize_all_256_levels():
    ramp = torch.arange(256.0).view(1, 1, 16, 16).expand(1, 3, 16, 16) / 255.0
    y = kornia_stage.solarize(ramp, recipe(solarize={"p": 1.0, "threshold": 100}),
                              torch.Generator().manual_seed(0))
    v = np.arange(256.0).reshape(16, 16)
    want = np.where(v >= 100, 255 - v, v) / 255.0
    for ch in range(3):
        np.testing.assert_allclose(y[0, ch].double().numpy(), want, atol=1e-6)


def test_kornia_sobel_is_the_scaled_luma_gradient_magnitude():
    rng = np.random.default_rng(8)
    img = rng.uniform(0.1, 0.9, (2, 10, 12, 3))
    img[0, :, 6:] = img[0, :, 6:] * 0.2 + 0.75              # a strong, saturating edge
    img[1, :5] = 0.4                                         # and a flat area (magnitude 0)
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    y = kornia_stage.sobel(x, recipe(sobel={"p": 1.0}), torch.Generator().manual_seed(0))
    for xi, yi in zip(img, hwc(y)):
        want = ref_sobel(luma(xi), top=1.0)
        for ch in range(3):
            np.testing.assert_allclose(yi[..., ch], want, atol=KTOL)
    assert (hwc(y)[0] == 1).any() and (hwc(y)[1][1:3] < 1e-6).all()   # saturated; flat -> 0


def test_kornia_noise_statistics(kdraws):
    x = torch.full((4, 3, 48, 48), 0.5)
    r = recipe(noise={"p": 1.0, "std": [4.0, 20.0]})
    y = kornia_stage.noise(x, r, torch.Generator().manual_seed(0))
    std = drawn(kdraws, (4.0, 20.0)) / 255.0
    for yi, s in zip(y.double(), std):
        e = (yi - 0.5).numpy()
        assert abs(e.mean()) < 5 * s / math.sqrt(e.size)
        assert abs(e.std() - s) < 0.05 * s
    edge = kornia_stage.noise(torch.full((1, 3, 64, 64), 250 / 255), r, torch.Generator().manual_seed(1))
    assert float(edge.max()) == 1.0 and float(edge.min()) > 0.5, "clamped to [0, 1]"


def test_kornia_cutout_is_a_square_of_fill(kdraws):
    side = 16
    r = recipe(cutout={"p": 1.0, "size": [0.2, 0.45], "fill": 7})
    x = unit_images(8, side, side, seed=9, lo=0.1)
    y = kornia_stage.cutout(x, r, torch.Generator().manual_seed(0))
    size = drawn(kdraws, (0.2, 0.45))
    for xi, yi, s in zip(hwc(x), hwc(y), size):
        changed = np.any(yi != xi, -1)
        rows, cols = np.nonzero(changed)
        edge = round(s * side)
        assert rows.max() - rows.min() + 1 == edge and cols.max() - cols.min() + 1 == edge
        assert changed.sum() == edge * edge, "one filled square"
        np.testing.assert_allclose(yi[changed], 7 / 255.0, atol=1e-7)
        assert np.array_equal(yi[~changed], xi[~changed])


def test_kornia_channel_drop_and_normalise_through_apply_recipe():
    x = torch.randint(1, 256, (24, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    r = recipe(channel_drop={"p": 1.0})
    y = kornia_stage.apply_recipe(x, r, torch.Generator().manual_seed(0)).double().numpy()
    full = (x.double().numpy() / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    kept = []
    for yi, fi in zip(y, full):
        alive = [c for c in range(3) if np.any(yi[c] != 0)]
        assert len(alive) == 1
        np.testing.assert_allclose(yi[alive[0]], fi[alive[0]], atol=1e-5)
        kept.append(alive[0])
    assert set(kept) == {0, 1, 2}
    plain = kornia_stage.apply_recipe(x, recipe(), torch.Generator().manual_seed(0)).double().numpy()
    np.testing.assert_allclose(plain, full, atol=1e-5)


def test_kornia_draws_differ_per_sample():
    # Six copies of one image: every op with a random parameter gives six different outputs.
    x = unit_images(1, 12, 12, seed=10).expand(6, 3, 12, 12).clone()
    r = recipe(jitter={"p": 1.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
               blur={"p": 1.0, "sigma": [0.5, 2.0], "kernel": 0.3})
    y = kornia_stage.apply_recipe(x, r, torch.Generator().manual_seed(3))
    flat = y.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(6) for j in range(i + 1, 6))


def test_kornia_group_shares_cutout_channel_and_coins():
    # (jitter, grayscale and blur under ``group`` are covered in test_pipeline_views.py.)
    x = unit_images(1, 12, 12, seed=11).expand(12, 3, 12, 12).clone()
    r = recipe(channel_drop={"p": 0.5}, solarize={"p": 0.5, "threshold": 128}, sobel={"p": 0.3},
               cutout={"p": 0.7, "size": [0.2, 0.5]})
    y = kornia_stage.apply_recipe(x, r, torch.Generator().manual_seed(4), group=3).view(4, 3, -1)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2]), "a group shares its draw"
    assert len({tuple(g[0].tolist()) for g in y}) > 1, "groups draw apart"

"""The fused CPU view kernel against float64 references written from the formulas.

Each step of ``clvr.pipeline._fused_kernels`` is compared on random images with a numpy float64
version of its definition (torchvision's semantics on float images, PIL's antialiased bilinear
resize, a reflect-101 Gaussian). The kernel computes in float32, hence tolerances of about 1e-3
grey levels, far under one grey level.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from clvr.pipeline import _fused_kernels as K
from clvr.pipeline import fused_views as fv
from clvr.pipeline import recipe as R

LUMA = np.array([0.299, 0.587, 0.114])


# -- float64 references ----------------------------------------------------------------------

def ref_resample_matrix(start, length, out_len):
    """(out_len, in) matrix of PIL-style bilinear (triangle) resampling of [start, start+length)."""
    scale = length / out_len
    support = max(scale, 1.0)
    m = np.zeros((out_len, start + length))
    for o in range(out_len):
        center = start + (o + 0.5) * scale
        for s in range(start, start + length):
            m[o, s] = max(0.0, 1.0 - abs((s + 0.5 - center) / support))
        m[o] /= m[o].sum()
    return m


def ref_resize(src, y, x, h, w, size):
    img = src.astype(np.float64)
    my = ref_resample_matrix(y, h, size)
    mx = ref_resample_matrix(x, w, size)
    out = np.einsum("oy,yxc->oxc", my, img[: y + h])
    out = np.einsum("px,oxc->opc", mx, out[:, : x + w])
    return out.transpose(2, 0, 1)          # CHW


def gray64(img):                            # img CHW
    return np.tensordot(LUMA, img, axes=1)


def ref_brightness(img, f):
    return np.clip(img * f, 0, 255)


def ref_contrast(img, f):
    return np.clip(f * img + (1 - f) * gray64(img).mean(), 0, 255)


def ref_saturation(img, f):
    return np.clip(f * img + (1 - f) * gray64(img)[None], 0, 255)


def ref_hue(img, shift):
    out = np.empty_like(img)
    for yy in range(img.shape[1]):
        for xx in range(img.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*(img[:, yy, xx] / 255.0))
            out[:, yy, xx] = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255.0
    return out


def ref_blur(img, sigma, window):
    """Full ``window``-tap Gaussian (torchvision's kernel) with reflect-101 borders."""
    r = window // 2
    t = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((0, 0), (r, r), (r, r)), mode="reflect")   # numpy 'reflect' = reflect-101
    H, W = img.shape[1:]
    tmp = sum(k[i] * pad[:, :, i:i + W] for i in range(2 * r + 1))
    return sum(k[i] * tmp[:, i:i + H, :] for i in range(2 * r + 1))


def ref_crop_box(H, W, scale, ratio, rng):
    """torchvision's RandomResizedCrop.get_params, one box, in plain Python."""
    for _ in range(10):
        target = H * W * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            return rng.integers(0, H - h + 1), rng.integers(0, W - w + 1), h, w
    if W / H < ratio[0]:
        w, h = W, round(W / ratio[0])
    elif W / H > ratio[1]:
        h, w = H, round(H * ratio[1])
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


def params(**kw):
    p = np.zeros(fv.NPARAM)
    p[fv.P_ORDER:fv.P_ORDER + 4] = [0, 1, 2, 3]
    p[fv.P_SOLAR] = -1
    p[fv.P_KEEP] = -1
    p[fv.P_MEAN:fv.P_MEAN + 3] = (0.5, 0.4, 0.3)
    p[fv.P_STD:fv.P_STD + 3] = (0.2, 0.25, 0.3)
    for k, v in kw.items():
        p[getattr(fv, "P_" + k.upper())] = v
    return p


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def smooth_image(rng, h, w):
    """A photo-like image: smooth gradients plus texture, uint8 HWC."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(5 * xx + 1), np.cos(4 * yy), np.sin(3 * (xx + yy))], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


# -- tests --------------------------------------------------------------------------------------

def test_parameter_columns_agree():
    for name in ("Y", "X", "H", "W", "FLIP", "JITTER", "BRIGHT", "CONTRAST", "SAT", "HUE", "ORDER",
                 "GRAY", "SIGMA", "RADIUS", "SOLAR", "KEEP", "MEAN", "STD"):
        assert getattr(K, "P_" + name) == getattr(fv, "P_" + name), name


@pytest.mark.parametrize("box,size", [((0, 0, 30, 40), 16),      # shrink 2-2.5x (antialias)
                                      ((3, 5, 9, 7), 16),        # enlarge
                                      ((10, 2, 17, 33), 16),     # shrink one axis, enlarge other
                                      ((0, 0, 30, 40), 40)])
def test_resize_matches_triangle_filter(rng, box, size):
    src = smooth_image(rng, 30, 40)
    buf = np.empty((3, size, size), np.float32)
    K.resize_into(src, *box, buf, np.empty(3 * 40, np.float32))
    ref = ref_resize(src, *box, size)
    np.testing.assert_allclose(buf, ref, atol=2e-3)
    # and it is not a plain (aliasing) bilinear sample when shrinking
    if box[2] / size > 1.5:
        naive = src[(np.arange(size) * box[2] // size) + box[0]][:, (np.arange(size) * box[3] // size) + box[1]]
        assert np.abs(buf - naive.transpose(2, 0, 1)).max() > 5


@pytest.mark.parametrize("op,ref,f", [(0, ref_brightness, 1.6), (0, ref_brightness, 0.3),
                                      (1, ref_contrast, 1.7), (1, ref_contrast, 0.2),
                                      (2, ref_saturation, 1.8), (2, ref_saturation, 0.0),
                                      (3, ref_hue, 0.17), (3, ref_hue, -0.2)])
def test_each_jitter_op(rng, op, ref, f):
    img = rng.uniform(0, 255, (3, 8, 8)).astype(np.float32)
    names = {0: "bright", 1: "contrast", 2: "sat", 3: "hue"}
    kw = {"bright": 1.0, "contrast": 1.0, "sat": 1.0, "hue": 0.0, names[op]: f}
    p = params(jitter=1, **kw)
    p[fv.P_ORDER:fv.P_ORDER + 4] = [op, (op + 1) % 4, (op + 2) % 4, (op + 3) % 4]
    buf = img.copy()
    K.colour(buf, p)
    np.testing.assert_allclose(buf, ref(img.astype(np.float64), f), atol=2e-3)
    assert np.abs(buf - img).max() > 1          # the op did something


def test_jitter_order_is_the_drawn_one(rng):
    img = rng.uniform(0, 255, (3, 6, 6)).astype(np.float32)
    p = params(jitter=1, bright=1.5, contrast=0.4, sat=1.7, hue=0.1)
    order = [3, 1, 0, 2]
    p[fv.P_ORDER:fv.P_ORDER + 4] = order
    buf = img.copy()
    K.colour(buf, p)
    ref = img.astype(np.float64)
    for op in order:
        ref = [lambda x: ref_brightness(x, 1.5), lambda x: ref_contrast(x, 0.4),
               lambda x: ref_saturation(x, 1.7), lambda x: ref_hue(x, 0.1)][op](ref)
    np.testing.assert_allclose(buf, ref, atol=3e-3)
    other = img.copy()
    p[fv.P_ORDER:fv.P_ORDER + 4] = [0, 1, 2, 3]
    K.colour(other, p)
    assert np.abs(other - buf).max() > 1        # the order matters, so the test can fail


def test_grayscale(rng):
    img = rng.uniform(0, 255, (3, 5, 7)).astype(np.float32)
    buf = img.copy()
    K.colour(buf, params(gray=1))
    g = gray64(img.astype(np.float64))
    for c in range(3):
        np.testing.assert_allclose(buf[c], g, atol=1e-3)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_blur_matches_full_kernel(rng, sigma):
    """The kernel keeps ceil(4 sigma) taps each side of SimCLR's 23-tap window (224 px): the
    difference from the full window is under 0.03 grey levels."""
    S = 40
    img = rng.uniform(0, 255, (3, S, S + 7)).astype(np.float32)
    window = R.Blur(kernel=0.1).window(224)
    assert window == 23
    radius = int(min(window // 2, math.ceil(4 * sigma)))
    p = params(sigma=sigma, radius=radius)
    p[fv.P_MEAN:fv.P_MEAN + 3] = 0.0              # identity normalisation: out = blurred pixels
    p[fv.P_STD:fv.P_STD + 3] = 1.0 / 255.0
    out = np.empty_like(img)
    K.blur(img.copy(), np.empty_like(img), p, out)
    np.testing.assert_allclose(out, ref_blur(img.astype(np.float64), sigma, window), atol=0.03)
    if sigma >= 0.7:
        assert np.abs(out - img).max() > 10


def test_finish_normalises_flips_and_solarizes(rng):
    img = rng.uniform(0, 255, (3, 4, 6)).astype(np.float32)
    p = params(flip=1, solar=128)
    out = np.empty_like(img)
    K.finish(img, p, out)
    x = img.astype(np.float64)
    x = np.where(x >= 128, 255 - x, x)[:, :, ::-1]
    mean, std = p[fv.P_MEAN:fv.P_MEAN + 3], p[fv.P_STD:fv.P_STD + 3]
    ref = (x / 255 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_channel_drop_comes_before_blur_and_gives_zero(rng):
    """Dropped channels become the mean before the blur (recipe.ORDER), so 0 once normalised."""
    src = smooth_image(rng, 20, 20)
    p = params(y=0, x=0, h=20, w=20, keep=2, sigma=1.0, radius=4)
    out = fv.render([src], p[None], np.array([0]), 20)[0]
    np.testing.assert_allclose(out[:2], 0.0, atol=1e-5)
    kept = ref_blur(ref_resize(src, 0, 0, 20, 20, 20), 1.0, 9)[2]
    np.testing.assert_allclose(out[2], (kept / 255 - 0.3) / 0.3, atol=1e-4)


def test_whole_view_composes_the_steps(rng):
    src = smooth_image(rng, 50, 60)
    p = params(y=4, x=7, h=40, w=45, flip=1, jitter=1, bright=1.3, contrast=0.7, sat=0.5, hue=0.05,
               gray=0, sigma=1.2, radius=5, solar=-1)
    p[fv.P_ORDER:fv.P_ORDER + 4] = [2, 0, 3, 1]
    S = 24
    out = fv.render([src], p[None], np.array([0]), S)[0]
    x = ref_resize(src, 4, 7, 40, 45, S)
    for op in [2, 0, 3, 1]:
        x = [lambda v: ref_brightness(v, 1.3), lambda v: ref_contrast(v, 0.7),
             lambda v: ref_saturation(v, 0.5), lambda v: ref_hue(v, 0.05)][op](x)
    x = ref_blur(x, 1.2, 11)[:, :, ::-1]
    mean, std = p[fv.P_MEAN:fv.P_MEAN + 3], p[fv.P_STD:fv.P_STD + 3]
    ref = (x / 255 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out, ref, atol=1e-4)      # 5e-3 grey levels / (255 * std)


def test_crop_boxes_follow_the_recipe(rng):
    n = 4000
    H, W = np.full(n, 375), np.full(n, 500)
    box = fv.crop_boxes(rng, H, W, (0.08, 1.0), (3 / 4, 4 / 3))
    y, x, h, w = box.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= H).all() and (x + w <= W).all()
    area = h * w / (375 * 500)
    aspect = w / h
    fitted = (area <= 1.0) & (aspect >= 0.74) & (aspect <= 1.34)
    assert fitted.mean() > 0.99
    assert 0.075 < area.min() < 0.09 and area.max() > 0.95
    # log-aspect is uniform: about half the boxes are wider than tall
    assert 0.45 < (aspect > 1).mean() < 0.6
    # the same statistics as a scalar version of torchvision's algorithm written here
    ref = np.array([ref_crop_box(375, 500, (0.08, 1.0), (3 / 4, 4 / 3), rng) for _ in range(n)])
    ref_area = ref[:, 2] * ref[:, 3] / (375 * 500)
    assert abs(area.mean() - ref_area.mean()) < 0.02
    assert abs(np.log(aspect).mean() - np.log(ref[:, 3] / ref[:, 2]).mean()) < 0.02
    assert abs(np.quantile(area, 0.9) - np.quantile(ref_area, 0.9)) < 0.03
    # placement uniform: box centres spread over the image
    cx = x + w / 2
    assert cx.std() > 50


def test_crop_fallback_is_a_centre_crop(rng):
    # a very wide image: no box of aspect <= 4/3 and area >= 0.9 fits in ten tries
    box = fv.crop_boxes(rng, [10], [1000], (0.95, 1.0), (3 / 4, 4 / 3))[0]
    assert tuple(box) == (0.0, (1000 - round(10 * 4 / 3)) // 2, 10.0, round(10 * 4 / 3))


def test_draws_follow_probabilities(rng):
    rec = R.build("simclr", views=1)[0]
    n = 20000
    prm = fv.draw(rng, rec, [(375, 500, 3)] * n, 224)
    assert abs(prm[:, fv.P_FLIP].mean() - 0.5) < 0.02
    assert abs(prm[:, fv.P_JITTER].mean() - 0.8) < 0.02
    assert abs(prm[:, fv.P_GRAY].mean() - 0.2) < 0.02
    fired = prm[:, fv.P_SIGMA] > 0
    assert abs(fired.mean() - 0.5) < 0.02
    sig = prm[fired, fv.P_SIGMA]
    assert 0.1 <= sig.min() < 0.12 and 1.98 < sig.max() <= 2.0
    assert (prm[fired, fv.P_RADIUS] == np.minimum(11, np.ceil(4 * sig))).all()
    for col, lo, hi in ((fv.P_BRIGHT, 0.2, 1.8), (fv.P_CONTRAST, 0.2, 1.8), (fv.P_SAT, 0.2, 1.8),
                        (fv.P_HUE, -0.2, 0.2)):
        v = prm[:, col]
        assert lo <= v.min() < lo + 0.01 and hi - 0.01 < v.max() <= hi
    orders = prm[:, fv.P_ORDER:fv.P_ORDER + 4]
    assert (np.sort(orders, 1) == [0, 1, 2, 3]).all()
    assert len({tuple(o) for o in orders[:2000]}) == 24      # every order occurs
    assert (prm[:, fv.P_SOLAR] == -1).all() and (prm[:, fv.P_KEEP] == -1).all()
    byol = R.build("byol", views=2)[1]
    prm = fv.draw(rng, byol, [(375, 500, 3)] * n, 224)
    assert abs((prm[:, fv.P_SOLAR] == 128).mean() - 0.2) < 0.02
    assert abs((prm[:, fv.P_SIGMA] > 0).mean() - 0.1) < 0.02


def test_supported_recipes():
    for name in ("simclr", "simclr-cifar", "instdisc", "mocov1", "mocov2", "byol", "pirl"):
        assert all(fv.supported(r) for r in R.build(name, views=2)), name
    rec = R.build("simclr", views=1)[0]
    assert not fv.supported(rec.replace(rotate={"p": 0.5}))
    assert not fv.supported(rec.replace(noise={"p": 0.5}))


def pil_view(img, p, size, window):
    """The view by torchvision's PIL path with the draws ``p`` (PIL's 8-bit steps)."""
    from PIL import Image, ImageEnhance
    y, x, h, w = (int(v) for v in p[fv.P_Y:fv.P_W + 1])
    im = img.resize((size, size), Image.BILINEAR, box=(x, y, x + w, y + h))
    if p[fv.P_FLIP]:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if p[fv.P_JITTER]:
        for op in p[fv.P_ORDER:fv.P_ORDER + 4].astype(int):
            if op == 0:
                im = ImageEnhance.Brightness(im).enhance(p[fv.P_BRIGHT])
            elif op == 1:
                im = ImageEnhance.Contrast(im).enhance(p[fv.P_CONTRAST])
            elif op == 2:
                im = ImageEnhance.Color(im).enhance(p[fv.P_SAT])
            else:
                hsv = np.asarray(im.convert("HSV")).copy()
                hsv[..., 0] = (hsv[..., 0].astype(int) + int(round(p[fv.P_HUE] * 255))) % 256
                im = Image.fromarray(hsv, "HSV").convert("RGB")
    if p[fv.P_GRAY]:
        im = im.convert("L").convert("RGB")
    v = np.asarray(im, np.float64).transpose(2, 0, 1)
    if p[fv.P_SIGMA] > 0:
        v = ref_blur(v, p[fv.P_SIGMA], window)
    return v


def test_same_draws_give_the_views_of_torchvisions_pil_path(rng):
    """With the same draws, the fused view equals the PIL pipeline's to within PIL's 8-bit
    rounding between steps: the recipe is the same, not just its statistics."""
    from PIL import Image
    rec = R.build("simclr", views=1)[0]
    size = 48
    imgs = [smooth_image(rng, 60, 80) for _ in range(12)]
    prm = fv.draw(rng, rec, [i.shape for i in imgs], size)
    prm[:, fv.P_JITTER] = 1.0                      # exercise every op on every image
    prm[:6, fv.P_GRAY] = 0.0
    out = fv.render(imgs, prm, np.arange(len(imgs)), size)
    mean, std = np.array(rec.normalize.mean), np.array(rec.normalize.std)
    for i, img in enumerate(imgs):
        ours = (out[i] * std[:, None, None] + mean[:, None, None]) * 255.0
        ref = pil_view(Image.fromarray(img), prm[i], size, rec.blur.window(size))
        diff = np.abs(ours - ref)
        assert diff.mean() < 2.0, (i, diff.mean())    # grey levels
        other = pil_view(Image.fromarray(img), prm[(i + 1) % len(imgs)], size, 5)
        assert np.abs(ours - other).mean() > 5 * diff.mean() + 2


def test_fallback_box_is_never_empty(rng):
    box = fv.crop_boxes(rng, [1, 100, 2], [1, 2, 100], (0.99, 1.0), (3.0, 4.0))
    assert (box[:, 2] >= 1).all() and (box[:, 3] >= 1).all()
    assert (box[:, 0] + box[:, 2] <= [1, 100, 2]).all() and (box[:, 1] + box[:, 3] <= [1, 2, 100]).all()


def test_recipes_without_antialias_stay_in_the_dali_graph():
    rec = R.build("simclr", views=1)[0]
    assert fv.supported(rec) and not fv.supported(rec.replace(crop={"antialias": False}))


# -- through the loader ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from conftest import make_demo
    return make_demo(tmp_path_factory.mktemp("fused") / "d", limit=48) / "train"


def test_loader_uses_the_kernel_and_breaking_an_epoch_keeps_the_next_one(digits):
    """Views are drawn per (seed, rank, epoch, step): a loop that breaks out of epoch 0 gets the
    same epoch-1 views as one that runs it to the end."""
    from clvr.pipeline import ViewLoader

    def epoch1(break_early):
        ld = ViewLoader(digits, "two_view", recipe="simclr-cifar", batch_size=8, seed=3)
        assert ld.ctx.fused
        for i, _ in enumerate(ld):
            if break_early and i == 1:
                break
        return [b.views[0].clone() for b in ld]

    full, broken = epoch1(False), epoch1(True)
    assert len(full) == len(broken) > 1
    assert all(torch.equal(a, b) for a, b in zip(full, broken))


def test_a_forked_child_can_use_the_kernel_after_its_parent(digits, tmp_path):
    """The kernel runs in plain threads (it releases the GIL), so a forked child works; numba's
    OpenMP threading layer would kill it."""
    import subprocess
    import sys
    code = (
        "import multiprocessing as mp, sys\n"
        "from clvr.pipeline import ViewLoader\n"
        f"def one():\n    ld = ViewLoader({str(digits)!r}, 'two_view', recipe='simclr-cifar', batch_size=8)\n"
        "    return float(next(iter(ld)).views[0].abs().sum())\n"
        "def child(q):\n    q.put(one())\n"
        "if __name__ == '__main__':\n"
        "    one()\n"
        "    ctx = mp.get_context('fork'); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,))\n"
        "    p.start(); p.join(120)\n"
        "    print(p.exitcode, q.get(timeout=5) > 0)\n")
    script = tmp_path / "fork.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ["0", "True"], r.stderr[-2000:]

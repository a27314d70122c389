"""The deterministic evaluation view (``crop.center``, preset ``eval``): resize + centre crop.

The view is compared with a float64 reference written from its definition: the centre box of
side ``center`` x the shorter side (rounded half up, origin floored), cut out, then resized with
PIL's antialiased bilinear (a triangle filter widened by the scale when shrinking). The images
are PNGs, so the decoded pixels are the ones written; their border (outside the box) is a colour
that the centre never has, and must not reach the view.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clvr.pipeline import PipelineError, ViewLoader
from clvr.pipeline import fused_views as fv
from clvr.pipeline import recipe as R

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

H, W = 40, 64            # non-square source images
SIZE = 24                # view side: the 35-px box shrinks to 24 px
CENTER = 0.875
STRIPE = (255, 0, 255)   # the border colour; the centre's red channel stays <= 150


def box_of(h, w, center=CENTER):
    side = math.floor(center * min(h, w) + 0.5)
    return (h - side) // 2, (w - side) // 2, side, side


def eval_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """Smooth gradients inside the centre box, magenta stripes everywhere outside it."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = STRIPE
    y, x, s, _ = box_of(h, w)
    yy, xx = np.mgrid[0:s, 0:s] / (s - 1)
    img[y:y + s, x:x + s, 0] = 20 + 130 * xx * yy
    img[y:y + s, x:x + s, 1] = 255 * yy
    img[y:y + s, x:x + s, 2] = int(rng.integers(0, 200)) * xx
    return img


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) triangle-filter weights (support widened by the scale when shrinking)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        c = (o + 0.5) * scale
        for s in range(n_in):
            m[o, s] = max(0.0, 1.0 - abs((s + 0.5 - c) / support))
        m[o] /= m[o].sum()
    return m


def reference(img: np.ndarray, size: int) -> np.ndarray:
    """The eval view in grey levels, CHW float64: centre box cut out, then resized."""
    y, x, h, w = box_of(*img.shape[:2])
    box = img[y:y + h, x:x + w].astype(np.float64)
    out = np.einsum("oy,yxc->oxc", resample_matrix(h, size), box)
    out = np.einsum("px,oxc->opc", resample_matrix(w, size), out)
    return out.transpose(2, 0, 1)


def grey_levels(view: torch.Tensor, recipe) -> np.ndarray:
    mean = np.array(recipe.normalize.mean)[:, None, None]
    std = np.array(recipe.normalize.std)[:, None, None]
    return (view.double().numpy() * std + mean) * 255.0


@pytest.fixture(scope="module")
def images() -> dict[int, np.ndarray]:
    return {i: eval_image(i) for i in range(4)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, images) -> Path:
    from clvr.cli import main
    root = tmp_path_factory.mktemp("eval")
    src = root / "src" / "stripes"
    src.mkdir(parents=True)
    for i, img in images.items():
        Image.fromarray(img).save(src / f"im{i}.png")
    out = root / "shards"
    assert main(["shard", "images", str(root / "src"), str(out), "--no-progress", "--workers", "1"]) == 0
    return out


def eval_views(data, cpu_views="fused", seed=0, epochs=1, size=SIZE):
    """{global index: view} of every epoch of an ``eval`` loader (no shuffling)."""
    ld = ViewLoader(data, "two_view", recipe={"base": "eval", "size": size}, batch_size=3, shuffle=False,
                    last_batch="pad", seed=seed, num_threads=1, cpu_views=cpu_views,
                    view_options={"views": 1})
    assert ld.ctx.fused == (cpu_views == "fused")
    out = []
    for _ in range(epochs):
        got = {}
        for b in ld:
            for i, v in zip(b.index[b.valid].tolist(), b.views[0][b.valid]):
                got[i] = v.clone()
        out.append(got)
    return out, ld.ctx.recipes[0]


# -- the recipe ---------------------------------------------------------------------------------

def test_eval_preset_is_a_centre_crop_without_augmentation():
    (rec,) = R.build("eval")
    assert rec.crop.center == 0.875 and rec.active() == ["crop"]          # the crop, nothing random
    assert (rec.flip.p, rec.jitter.p, rec.grayscale.p, rec.blur.p) == (0, 0, 0, 0)
    (none,) = R.build("none")
    assert none.crop.center == 0.0 and none.crop.p == 0.0 and none.active() == []
    assert R.build({"base": "eval", "crop": {"center": 1.0}})[0].crop.center == 1.0


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_center_outside_0_1_is_rejected(value):
    with pytest.raises(PipelineError, match=r"crop\.center = .* is not in \[0, 1\]"):
        R.build({"base": "eval", "crop": {"center": value}})
    with pytest.raises(PipelineError, match=r"crop\.center"):
        R.build(R.Recipe(crop=R.Crop(center=value)))          # made in Python, checked too


def test_center_boxes_follow_the_formula():
    hs, ws = [40, 36, 64, 7, 1], [64, 36, 40, 300, 5]
    got = fv.center_boxes(hs, ws, 0.875)
    assert got.tolist() == [list(box_of(h, w)) for h, w in zip(hs, ws)]
    assert got[1].tolist() == [2, 2, 32, 32]                  # 31.5 rounds half up
    assert fv.center_boxes([10], [20], 1.0)[0].tolist() == [0, 5, 10, 10]
    with pytest.raises(ValueError):
        fv.center_boxes([10], [10], 0.0)


def test_fused_draws_the_centre_box():
    (rec,) = R.build("eval")
    prm = fv.draw(np.random.default_rng(0), rec, [(40, 64, 3), (64, 40, 3)], 224)
    assert prm[:, fv.P_Y:fv.P_W + 1].tolist() == [[2, 14, 35, 35], [14, 2, 35, 35]]
    assert not prm[:, fv.P_FLIP].any() and not prm[:, fv.P_JITTER].any() and not prm[:, fv.P_GRAY].any()
    assert fv.supported(rec) and not fv.supported(rec.replace(crop={"antialias": False}))


# -- through the loader -------------------------------------------------------------------------

@pytest.mark.parametrize("cpu_views,tol", [("fused", 1e-3), ("dali", 0.75)])
def test_eval_view_of_a_non_square_image_is_its_resized_centre(shards, images, cpu_views, tol):
    """The fused kernel computes in float32 (no rounding); DALI's graph rounds the resized box
    to 8 bits, hence its tolerance of under one grey level."""
    (views,), rec = eval_views(shards, cpu_views)
    assert sorted(views) == sorted(images)
    for i, img in images.items():
        got = grey_levels(views[i], rec)
        ref = reference(img, SIZE)
        assert got.shape == (3, SIZE, SIZE)
        np.testing.assert_allclose(got, ref, atol=tol)
        # nothing of the magenta border reaches the view: red stays that of the centre
        assert got[0].max() <= 150.5 and ref[0].max() <= 150.0
        whole = np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR), np.float64)
        assert np.abs(whole.transpose(2, 0, 1) - ref).max() > 50    # the whole image would differ


def test_fused_and_dali_paths_agree(shards):
    (fused,), rec = eval_views(shards, "fused")
    (dali,), _ = eval_views(shards, "dali")
    assert sorted(fused) == sorted(dali)
    for i in fused:
        diff = np.abs(grey_levels(fused[i], rec) - grey_levels(dali[i], rec))
        assert diff.max() <= 0.75, (i, diff.max())


@pytest.mark.parametrize("cpu_views", ["fused", "dali"])
def test_eval_view_is_the_same_in_every_epoch_and_for_every_seed(shards, cpu_views):
    (a0, a1), _ = eval_views(shards, cpu_views, seed=0, epochs=2)
    (b0,), _ = eval_views(shards, cpu_views, seed=7)
    assert sorted(a0) == sorted(a1) == sorted(b0) == [0, 1, 2, 3]
    for i in a0:
        assert torch.equal(a0[i], a1[i]) and torch.equal(a0[i], b0[i])
    assert not torch.equal(a0[0], a0[1])                      # the images do differ


def test_dali_graph_centre_crop_for_non_square_views_and_clips():
    """A view of another aspect takes the centred box of that aspect, ``center`` x the largest
    one in the image; a clip (FHWC) gets the same box on every frame."""
    from nvidia.dali import fn, pipeline_def

    from clvr.pipeline import augment

    yy, xx = np.mgrid[0:30, 0:52]
    img = np.stack([4 * xx + 20, 7 * yy + 10, 2 * (xx + yy)], -1).astype(np.uint8)   # a 1-px shift shows
    rec = R.build("eval", views=1)[0]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_dynamic=True)
    def graph():
        image = fn.external_source(source=lambda: [img], batch=True, layout="HWC")
        clip = fn.external_source(source=lambda: [np.stack([img, img[::-1].copy()])], batch=True,
                                  layout="FHWC")
        return augment.crop(image, rec, (12, 20)), augment.crop(clip, rec, (16, 16))

    pipe = graph()
    pipe.build()
    wide, clip = (np.asarray(t[0]).astype(np.float64) for t in pipe.run())
    y, x, h, w = fv.center_boxes([30], [52], 0.875, aspect=20 / 12)[0].astype(int)
    assert (h, w) == (26, 44) and (y, x) == (2, 4)            # 0.875 x the 30 x 50 box
    box = img[y:y + h, x:x + w].astype(np.float64)
    ref = np.einsum("oy,yxc->oxc", resample_matrix(h, 12), box)
    ref = np.einsum("px,oxc->opc", resample_matrix(w, 20), ref)
    assert wide.shape == (12, 20, 3)
    np.testing.assert_allclose(wide, ref, atol=0.75)
    assert clip.shape == (2, 16, 16, 3)
    for f, frame in enumerate([img, img[::-1]]):
        np.testing.assert_allclose(clip[f], reference(frame, 16).transpose(1, 2, 0), atol=0.75)

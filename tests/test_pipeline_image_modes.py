"""Image modes end to end: ``clvr shard images`` then ``ViewLoader``, pixels checked.

Grayscale, palette (with and without transparency), RGBA, LA and 16-bit images must reach a
generator as 3-channel RGB with the pixel values the sharder documents (``shards/images.py``):
grey and palette images as PIL's ``convert("RGB")``; alpha composited over white; 16-bit
samples scaled to 8 bits (v * 255 / 65535, rounded). The views are read with the ``none``
recipe at the images' own size (24 x 24), so the whole-image resize is the identity and the
normalisation is undone exactly: lossless sources must come back bit for bit.

Also: an image smaller than the crop, and videos shorter than a clip's span.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clvr.cli import main
from clvr.pipeline import ViewLoader
from clvr.shards.demo import VIDEO_FRAMES
from conftest import linear_taps, make_demo, photo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIDE = 24
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
LO, HI = -0.485 / 0.229 - 1e-4, (1 - 0.406) / 0.225 + 1e-4     # range of normalised pixels
WHITE = 255.0


def png_rgb16(path: Path, arr: np.ndarray) -> None:
    """Write a 48-bit RGB PNG (PIL cannot): IHDR depth 16, colour type 2, one filter byte a row."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in arr)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def over_white(rgb, alpha):
    """Alpha compositing over the white background, float64."""
    a = np.asarray(alpha, np.float64)[..., None] / 255.0
    return np.asarray(rgb, np.float64) * a + WHITE * (1 - a)


def base(seed: int) -> Image.Image:
    return photo(seed, size=(SIDE, SIDE))


def alpha_ramp() -> np.ndarray:
    """Alpha 0 in the top rows (pure background), 255 at the bottom, partial in between."""
    a = np.tile(np.linspace(0, 255, SIDE)[:, None], (1, SIDE)).round().astype(np.uint8)
    a[:3] = 0
    return a


# Each case: (folder = class name, file name, writer(path) -> expected RGB float64 (H, W, 3),
# tolerance in grey levels with the reason).
def _rgb_png(p):
    base(1).save(p)
    return np.asarray(base(1), np.float64), 0, "lossless, kept as it is"


def _gray_png(p):
    im = base(2).convert("L")
    im.save(p)
    assert Image.open(p).mode == "L"
    return np.asarray(Image.open(p).convert("RGB"), np.float64), 0, "lossless PNG re-encode"


def _gray_jpeg(p):
    base(3).convert("L").save(p, quality=95)
    assert Image.open(p).mode == "L"
    # the sharder re-encodes it as an RGB JPEG (quality 95): a second lossy pass, +-2 levels
    return np.asarray(Image.open(p).convert("RGB"), np.float64), 2, "JPEG re-encoded at q95"


def _rgb_jpeg(p):
    base(4).save(p, quality=92, subsampling=0)
    # kept byte for byte; DALI's and PIL's libjpeg decoders may differ by a level in the IDCT
    return np.asarray(Image.open(p).convert("RGB"), np.float64), 1, "two JPEG decoders"


def _palette(p):
    base(5).quantize(12).save(p)
    src = Image.open(p)
    assert src.mode == "P" and "transparency" not in src.info
    return np.asarray(src.convert("RGB"), np.float64), 0, "palette lookup"


def _palette_transparent(p):
    pal = base(6).quantize(12)
    pal.save(p, transparency=0)
    src = Image.open(p)
    assert src.mode == "P" and src.info.get("transparency") == 0
    idx = np.asarray(src)
    assert (idx == 0).any() and (idx != 0).any()
    want = np.asarray(src.convert("RGB"), np.float64).copy()
    want[idx == 0] = WHITE                 # the transparent entry shows the white background
    return want, 0, "alpha 0 or 255 only"


def _palette_partial_alpha(p):
    pal = base(7).quantize(8)
    alphas = bytes([0, 40, 90, 128, 170, 210, 255, 255])
    pal.save(p, transparency=alphas)
    src = Image.open(p)
    assert src.mode == "P"
    idx = np.asarray(src)
    rgb = np.array(src.getpalette()[:3 * 256], np.float64).reshape(-1, 3)[idx]
    return over_white(rgb, np.array(list(alphas))[idx]), 0.5, "compositing rounds once"


def _rgba(p):
    rgb = np.asarray(base(8))
    Image.fromarray(np.dstack([rgb, alpha_ramp()]), "RGBA").save(p)
    return over_white(rgb, alpha_ramp()), 0.5, "compositing rounds once"


def _la(p):
    g = np.asarray(base(9).convert("L"))
    Image.fromarray(np.dstack([g, alpha_ramp()]), "LA").save(p)
    assert Image.open(p).mode == "LA"
    return np.repeat(over_white(g[..., None], alpha_ramp()), 3, -1), 0.5, "compositing rounds once"


def _gray16(p):
    v = (np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 113 + 7) % 65536
    Image.fromarray(v.astype(np.uint16)).save(p)
    assert Image.open(p).mode.startswith("I;16")
    want = np.repeat(np.round(v / 257.0)[..., None], 3, -1)     # v * 255 / 65535
    clipped = np.asarray(Image.open(p).convert("RGB"), np.float64)
    assert np.abs(clipped - want).max() > 50, "PIL's own convert('RGB') would be wrong here"
    return want, 0, "the sharder rounds exactly"


def _rgb48(p):
    rng = np.random.default_rng(10)
    v = rng.integers(0, 65536, (SIDE, SIDE, 3))
    png_rgb16(p, v)
    assert Image.open(p).mode == "RGB"
    # how the 16 bits are cut to 8 is not documented (PIL keeps the high byte): +-1 level
    return v / 257.0, 1, "16 -> 8 bits, rounding not documented"


CASES = {
    "rgb_png": ("x.png", _rgb_png),
    "gray_png": ("x.png", _gray_png),
    "gray_jpeg": ("x.jpg", _gray_jpeg),
    "rgb_jpeg": ("x.jpg", _rgb_jpeg),
    "palette": ("x.png", _palette),
    "palette_transparent": ("x.png", _palette_transparent),
    "palette_partial_alpha": ("x.png", _palette_partial_alpha),
    "rgba": ("x.png", _rgba),
    "la": ("x.png", _la),
    "gray16": ("x.png", _gray16),
    "rgb48": ("x.png", _rgb48),
}
SMALL = "zz_small"          # a 20 x 16 RGB PNG, smaller than a 64-px crop


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    src = root / "src"
    expected = {}
    for name, (file, write) in CASES.items():
        (src / name).mkdir(parents=True)
        expected[name] = write(src / name / file)
    (src / SMALL).mkdir()
    small = photo(11, size=(20, 16))
    small.save(src / SMALL / "x.png")
    out = root / "out"
    assert main(["shard", "images", str(src), str(out), "--no-progress", "--workers", "1"]) == 0
    data = out / "train" if (out / "train").is_dir() else out
    classes = sorted([*CASES, SMALL])
    return data, classes, expected, np.asarray(small, np.float64)


def read_all(data, recipe, **kw):
    """{label: view (3, S, S) float32} over one epoch, every sample once."""
    ld = ViewLoader(data, "two_view", recipe=recipe, batch_size=4, shuffle=False, last_batch="pad",
                    num_threads=1, view_options={"views": 1}, **kw)
    got = {}
    for b in ld:
        for v, lab, ok in zip(b.views[0], b.label.tolist(), b.valid.tolist()):
            if ok:
                got[lab] = v
    return got


@pytest.fixture(scope="module")
def loaded(shard_set):
    data, classes, expected, _ = shard_set
    views = read_all(data, {"base": "none", "size": SIDE})
    assert len(views) == len(classes)
    out = {}
    for lab, v in views.items():
        assert v.shape == (3, SIDE, SIDE) and v.dtype == torch.float32
        # undo the normalisation: (x / 255 - mean) / std, float32
        x = (v.double().numpy().transpose(1, 2, 0) * STD + MEAN) * 255.0
        out[classes[lab]] = x
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_mode_arrives_as_rgb_with_the_documented_pixels(name, shard_set, loaded):
    _, _, expected, _ = shard_set
    want, tol, why = expected[name]
    x = loaded[name]
    # float32 normalisation round trip: within 1e-3 of an integer level
    assert np.abs(x - np.round(x)).max() < 1e-3
    got = np.round(x)
    assert got.shape == (SIDE, SIDE, 3)
    d = np.abs(got - want)
    # tol: 0 for lossless paths (exact), else the grey levels the case's reason allows
    assert d.max() <= tol + 1e-9, f"{name}: off by {d.max()} grey levels ({why})"
    assert d.mean() <= 1.0, f"{name}: mean error {d.mean():.3f} ({why})"


def test_grey_sources_stay_grey(loaded):
    for name in ("gray_png", "gray_jpeg", "la", "gray16"):
        g = np.round(loaded[name])
        assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2]), name


def test_alpha_is_composited_over_white_not_black_or_dropped(shard_set, loaded):
    # The top rows of the RGBA and LA images are fully transparent: white, whatever the colour.
    for name in ("rgba", "la"):
        assert (np.round(loaded[name][:3]) == 255).all(), name
    rgb = np.asarray(photo(8, size=(SIDE, SIDE)), np.float64)
    assert np.abs(np.round(loaded["rgba"]) - rgb).max() > 100, "alpha dropped"


def test_an_image_smaller_than_the_crop_is_upscaled(shard_set):
    """A 20 x 16 image with a 64-px crop: the random-resized crop takes a window of the small
    image and resizes it up to 64 x 64 (linear interpolation; nothing is padded or rejected).
    With scale [1, 1] and ratio 20/16 the window is the whole image, so the view is the linear
    upscale of it (edge pixels replicated), to one grey level (uint8 rounding)."""
    data, classes, _, small = shard_set
    lab = classes.index(SMALL)
    views = read_all(data, {"base": "simclr", "size": 64})
    v = views[lab]
    assert v.shape == (3, 64, 64) and torch.isfinite(v).all()
    assert float(v.min()) >= LO and float(v.max()) <= HI
    whole = {"base": "none", "size": 64, "crop": {"p": 1.0, "scale": [1.0, 1.0], "ratio": [1.25, 1.25]}}
    x = (read_all(data, whole)[lab].double().numpy().transpose(1, 2, 0) * STD + MEAN) * 255.0
    want = upscale(small, 64, 64)
    assert np.abs(np.round(x) - want).max() <= 1.0 + 1e-6     # one uint8 rounding
    assert np.abs(np.round(x) - nearest(small, 64, 64)).max() > 5, "interpolated, not repeated"


def upscale(x, h, w):
    return np.einsum("ij,jkc,lk->ilc", linear_taps(x.shape[0], h), x, linear_taps(x.shape[1], w),
                     optimize=True)


def nearest(x, h, w):
    rows = (np.arange(h) * x.shape[0]) // h
    cols = (np.arange(w) * x.shape[1]) // w
    return x[rows][:, cols]


# --------------------------------------------------------------------------- short videos
# test_pipeline_views.py checks the stride shrinking (frames 8, stride 8 -> stride 2) and
# ``short="repeat"`` with a span of 57 frames; these add the exact frames in the other cases.


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("video") / "d", "digits-video", 12) / "train"


def frame_index(videos, **opts):
    opts.setdefault("size", 16)
    ld = ViewLoader(videos, "video_clips", recipe="none", batch_size=4, num_threads=1, seed=3,
                    view_options=opts)
    return next(iter(ld))["frame_index"]


def test_shrink_with_fewer_frames_than_the_clip_repeats_the_last_frame(videos):
    # F = 16 frames, T = 20: the stride shrinks to 1 and frames past the end repeat frame 15.
    fi = frame_index(videos, clips=2, frames=VIDEO_FRAMES + 4, stride=3)
    want = torch.tensor([min(k, VIDEO_FRAMES - 1) for k in range(VIDEO_FRAMES + 4)])
    assert fi.shape == (4, 2, VIDEO_FRAMES + 4) and (fi == want).all()


def test_shrink_starts_are_uniform_over_the_room_left(videos):
    # T = 6, s = 5: span 26 > 16, so s = floor(15 / 5) = 3, span 16, no room: start 0.
    fi = frame_index(videos, clips=3, frames=6, stride=5)
    assert (fi == torch.arange(0, 16, 3)).all()
    # T = 5, s = 5: s = floor(15 / 4) = 3, span 13, starts in 0..3, frames start + 3k.
    fi = frame_index(videos, clips=3, frames=5, stride=5)
    starts = fi[..., 0]
    assert (fi == starts[..., None] + 3 * torch.arange(5)).all()
    assert int(starts.min()) >= 0 and int(starts.max()) <= 3 and len(set(starts.flatten().tolist())) > 1
    # T = 2, s = 20: the largest stride that fits is 15: frames 0 and 15.
    assert (frame_index(videos, clips=2, frames=2, stride=20) == torch.tensor([0, VIDEO_FRAMES - 1])).all()


def test_repeat_keeps_the_stride_and_clamps_to_the_last_frame(videos):
    # T = 4, s = 6: span 19 > 16, no room: start 0, frames 0, 6, 12 and then 15 (the last).
    fi = frame_index(videos, clips=2, frames=4, stride=6, short="repeat")
    assert (fi == torch.tensor([0, 6, 12, VIDEO_FRAMES - 1])).all()
    # T = 2, s = 20: frame 20 does not exist; the second frame is the last one.
    fi = frame_index(videos, clips=2, frames=2, stride=20, short="repeat")
    assert (fi == torch.tensor([0, VIDEO_FRAMES - 1])).all()

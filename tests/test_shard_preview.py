"""``clvr shard preview``: a PNG contact sheet a person can look at."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_preview_of_objects_draws_boxes(tmp_path, clvr):
    out = tmp_path / "objects"
    assert clvr("shard", "demo", "digits-objects", out, "--limit", "40", "--no-progress", "--workers", "1").code == 0
    r = clvr("shard", "preview", out, "--count", "6", "--columns", "3")
    assert r.code == 0, r.err
    png = out / "preview.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 3 * 128 and im.height >= 2 * 128
        arr = np.asarray(im.convert("RGB"))
    magenta = (arr[..., 0] == 255) & (arr[..., 1] == 0) & (arr[..., 2] == 255)
    assert magenta.sum() > 50, "box outlines are drawn"


def test_preview_of_videos_and_bad_split(tmp_path, clvr):
    out = tmp_path / "video"
    assert clvr("shard", "demo", "digits-video", out, "--limit", "20", "--no-progress", "--workers", "1").code == 0
    r = clvr("shard", "preview", out, "--split", "val", "--png", tmp_path / "v.png", "--count", "2")
    assert r.code == 0, r.err
    with Image.open(tmp_path / "v.png") as im:
        assert im.width >= 2 * 128  # a strip of frames per sample
    r = clvr("shard", "preview", out, "--split", "test")
    assert r.code == 2 and "no split 'test'" in r.err

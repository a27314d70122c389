"""The libjpeg-turbo fast path for plain colour JPEGs decides as the PIL path does, except that it
is stricter: libjpeg's warnings about corrupt data, which PIL ignores, reject the image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clvr.shards import images
from clvr.shards.errors import Reject
from clvr.shards.images import ImageOptions, prepare_image

from conftest import encode, photo


def _noise(seed=0, size=(64, 48)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8))


def _cases():
    good = encode(_noise(), "JPEG", quality=90)
    corrupt = bytearray(good)
    for i in range(len(good) // 2, len(good) // 2 + 200):
        corrupt[i] ^= 0x55
    return {
        "good": good,
        "progressive": encode(_noise(1), "JPEG", quality=85, progressive=True),
        "photo": encode(photo(3), "JPEG"),
        "truncated": good[: len(good) // 2],
        "corrupt": bytes(corrupt),
        "gray": encode(_noise(2).convert("L"), "JPEG"),
        "cmyk": encode(_noise(3).convert("CMYK"), "JPEG"),
        "soi_then_junk": b"\xff\xd8\xff" + b"junk" * 50,
        "big": encode(_noise(4, (300, 200)), "JPEG"),
    }


def _outcome(data: bytes, options: ImageOptions):
    try:
        r = prepare_image(data, options)
    except Reject:
        return "rejected"
    return (r.ext, r.data == data, r.width, r.height, bool(r.notes))


@pytest.mark.parametrize("options", [ImageOptions(), ImageOptions(verify=False), ImageOptions(max_side=100),
                                     ImageOptions(max_pixels=20_000)], ids=["verify", "no-verify", "max-side", "max-pixels"])
def test_fast_path_agrees_with_pil(monkeypatch, options):
    assert images.simplejpeg is not None, "simplejpeg is a dependency"
    fast = {k: _outcome(v, options) for k, v in _cases().items()}
    monkeypatch.setattr(images, "simplejpeg", None)
    slow = {k: _outcome(v, options) for k, v in _cases().items()}
    for name in fast:
        if slow[name] == "rejected" or name != "corrupt":
            assert fast[name] == slow[name], name
    if options.verify:
        assert fast["corrupt"] == "rejected", "corrupt entropy data is caught (PIL lets it through)"
        assert fast["truncated"] == fast["corrupt"] == fast["soi_then_junk"] == "rejected"
        assert fast["good"] == ("jpg", True, 64, 48, False)


def test_fast_path_is_taken_for_plain_colour_jpegs(monkeypatch):
    calls = []
    real = images._fast_jpeg
    monkeypatch.setattr(images, "_fast_jpeg", lambda d, o: calls.append(1) or real(d, o))
    prepare_image(_cases()["good"], ImageOptions())
    prepare_image(encode(photo(1), "PNG"), ImageOptions())
    assert calls == [1]

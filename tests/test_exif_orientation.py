"""EXIF orientation: every reader (DALI applies the tag, PIL does not) sees the same pixels."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

from clvr.shards.exif import jpeg_orientation, reset_jpeg_orientation
from clvr.shards.images import ImageOptions, prepare_image

from conftest import read_samples


def _oriented_jpeg(orientation: int, size=(48, 32), seed=0) -> tuple[bytes, Image.Image]:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 3] = (220, 30, 30)         # a red band on the left: shows any rotation
    arr[: size[1] // 4, :, 2] = 200                 # a blue band on top
    arr += rng.integers(0, 20, arr.shape, dtype=np.uint8)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue(), im


def _big_endian_exif_jpeg(orientation: int) -> bytes:
    """A JPEG whose APP1 EXIF block is big-endian ('MM'), built by hand."""
    tiff = b"MM" + struct.pack(">HI", 42, 8) + struct.pack(">H", 1) + \
        struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    app1 = b"Exif\0\0" + tiff
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_parser_reads_and_resets_the_tag(orientation):
    data, _ = _oriented_jpeg(orientation)
    assert jpeg_orientation(data)[0] == orientation
    reset = reset_jpeg_orientation(data)
    assert len(reset) == len(data)
    assert Image.open(io.BytesIO(reset)).getexif().get(0x0112) == 1
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(reset))), np.asarray(Image.open(io.BytesIO(data))))
    big = _big_endian_exif_jpeg(orientation)
    assert jpeg_orientation(big)[0] == orientation
    assert Image.open(io.BytesIO(reset_jpeg_orientation(big))).getexif().get(0x0112) == 1


@pytest.mark.parametrize("orientation", [3, 6, 8, 5])
def test_images_are_turned_upright_and_lose_the_tag(orientation):
    data, im = _oriented_jpeg(orientation)
    r = prepare_image(data, ImageOptions())
    stored = Image.open(io.BytesIO(r.data))
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert stored.size == upright.size == (r.width, r.height)
    assert stored.getexif().get(0x0112, 1) == 1
    diff = np.abs(np.asarray(stored, int) - np.asarray(upright, int)).mean()
    assert diff < 3.0  # one JPEG generation at quality 95
    assert any("orientation" in n for n in r.notes)


def test_reset_mode_keeps_pixels_and_clears_the_tag():
    data, _ = _oriented_jpeg(6)
    for verify in (True, False):
        r = prepare_image(data, ImageOptions(orientation="reset", verify=verify))
        assert r.data == reset_jpeg_orientation(data) and (r.width, r.height) == (48, 32)


def test_dali_and_pil_see_the_same_pixels_in_the_shard(tmp_path, clvr):
    from nvidia.dali import fn, pipeline_def, types

    src = tmp_path / "src"
    src.mkdir()
    for o in (1, 6, 8):
        (src / f"o{o}.jpg").write_bytes(_oriented_jpeg(o, seed=o)[0])
    out = tmp_path / "out"
    assert clvr("shard", "images", src, out, "--no-progress", "--workers", "1").code == 0
    tar = str(out / "shard-000000.tar")
    idx = str(out / "shard-000000.idx")

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def pipe():
        jpg, meta = fn.readers.webdataset(paths=[tar], index_paths=[idx], ext=["jpg", "json"],
                                          dtypes=[types.UINT8, types.UINT8], random_shuffle=False)
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), meta

    p = pipe()
    p.build()
    images, metas = p.run()
    pil = [np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB")) for s in read_samples([tar])]
    for i in range(3):
        dali = np.array(images.at(i))
        meta = json.loads(bytes(np.array(metas.at(i))))
        assert dali.shape == pil[i].shape == (meta["height"], meta["width"], 3)
        assert np.abs(dali.astype(int) - pil[i].astype(int)).mean() < 2.0
    sizes = sorted((json.loads(s["json"])["src"], (json.loads(s["json"])["width"], json.loads(s["json"])["height"]))
                   for s in read_samples([tar]))
    assert sizes == [("o1.jpg", (48, 32)), ("o6.jpg", (32, 48)), ("o8.jpg", (32, 48))]


def test_coco_resets_the_tag_so_boxes_keep_their_pixels(tmp_path, clvr):
    images = tmp_path / "images"
    images.mkdir()
    data, _ = _oriented_jpeg(6)
    (images / "a.jpg").write_bytes(data)
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 48, "height": 32}],
            "categories": [{"id": 5, "name": "band"}],
            "annotations": [{"id": 9, "image_id": 1, "category_id": 5, "bbox": [0, 0, 16, 32]}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    assert clvr("shard", "coco", tmp_path / "instances.json", images, out, "--no-progress", "--workers", "1").code == 0
    (s,) = read_samples([out / "shard-000000.tar"])
    assert s["jpg"] == reset_jpeg_orientation(data)
    assert np.frombuffer(s["boxes.f32"], "<f4").tolist() == [0, 0, 16, 32]
    meta = json.loads(s["json"])
    assert (meta["width"], meta["height"]) == (48, 32)
    log = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert any("orientation 6 reset" in e["reason"] for e in log)


def test_orientation_stored_as_long_is_read_and_reset():
    """Some writers store the tag as LONG (type 4) instead of SHORT; PIL reads both."""
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", 1) + \
        struct.pack("<HHII", 0x0112, 4, 1, 6) + struct.pack("<I", 0)
    app1 = b"Exif\0\0" + tiff
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, "JPEG")
    plain = buf.getvalue()
    data = plain[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + plain[2:]
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == 6
    assert jpeg_orientation(data)[0] == 6
    reset = reset_jpeg_orientation(data)
    assert len(reset) == len(data) and Image.open(io.BytesIO(reset)).getexif().get(0x0112) == 1
    r = prepare_image(data, ImageOptions())
    assert (r.width, r.height) == (6, 8)

"""Defects found by reviewing clvr shard with hostile input, each pinned by a test."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from clvr.shards.boxes import check_box
from clvr.shards.job import Item, JobConfig, Prepared, Split, run_job

from conftest import demo_shards, edit_json, read_rejects


def _corrupt_jpeg(orientation: int | None = None) -> bytes:
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), np.uint8))
    buf = io.BytesIO()
    kw = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.save(buf, "JPEG", quality=90, **kw)
    data = bytearray(buf.getvalue())
    for i in range(len(data) // 2, len(data) // 2 + 40):
        data[i] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("name,extra", [("rot6.jpg", []), ("plain.jpg", ["--max-side", "32"]),
                                        ("plain.jpg", ["--proposals", "felzenszwalb"])],
                         ids=["exif-rotated", "resized", "proposals"])
def test_corrupt_jpegs_are_rejected_on_every_path(tmp_path, clvr, name, extra):
    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_bytes(_corrupt_jpeg(6 if name.startswith("rot") else None))
    out = tmp_path / "out"
    r = clvr("shard", "images", src, out, "--no-progress", "--workers", "1", *extra)
    assert r.code == 0, r.err
    (line,) = read_rejects(out)
    assert line["action"] == "rejected" and "corrupt" in line["reason"]


def test_a_nul_byte_in_a_listed_path_rejects_that_entry_only(tmp_path, clvr):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": "a\u0000b.png", "label": "x"}) + "\n"
                                         + json.dumps({"path": "ok.png", "label": "x"}) + "\n")
    out = tmp_path / "out"
    r = clvr("shard", "images", tmp_path / "list.jsonl", out, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    (line,) = read_rejects(out)
    assert "NUL" in line["reason"]
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 1


@pytest.mark.parametrize("bbox,word", [("1234", "malformed"), ([True, 0, 3, 3], "malformed"),
                                       ([10**400, 1, 3, 3], "too large"), ([1, 2, 3], "malformed")])
def test_malformed_boxes_are_rejected(bbox, word):
    box, note = check_box(bbox, 100, 100)
    assert box is None and word in note


def _cfg(out, **kw):
    return JobConfig(kind="test", out=out, command=["test"], options={}, shard_size=2, workers=1,
                     progress=False, **kw)


class _Stop:
    def __init__(self, stop_at=None):
        self.stop_at = stop_at

    def __call__(self, item):
        if item.src == f"i{self.stop_at}":
            raise KeyboardInterrupt
        return Prepared({"txt": item.src.encode()})


@pytest.mark.parametrize("change", ["classes", "listing_notes"])
def test_a_relabelled_or_relisted_job_starts_over(tmp_path, change):
    items = [Item(f"i{k}", k % 2) for k in range(10)]
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out, classes=["cat", "dog"]), [Split(None, items)], _Stop(7), log=lambda m: None)
    kw = {"classes": ["kitty", "puppy"]} if change == "classes" else \
        {"classes": ["cat", "dog"], "listing_notes": [("readme.txt", "sample", "rejected", "not an image")]}
    messages = []
    result = run_job(_cfg(out, **kw), [Split(None, items)], _Stop(), log=messages.append)
    assert not result.resumed and any("starting over" in m for m in messages)


def test_names_in_an_old_manifest_cannot_reach_outside_out(tmp_path, clvr, image_folder):
    parent = tmp_path / "P"
    out = parent / "out"
    out.mkdir(parents=True)
    (parent / "manifest.json").write_text("keep me")
    (parent / "victim").mkdir()
    (parent / "victim" / "manifest.json").write_text("keep me too")
    (out / "manifest.json").write_text(json.dumps({"format": "clvr-shards", "format_version": 1,
                                                   "splits": {"../victim": {}, "..": {}}}))
    r = clvr("shard", "images", image_folder, out, "--overwrite", "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    assert (parent / "manifest.json").read_text() == "keep me"
    assert (parent / "victim" / "manifest.json").read_text() == "keep me too"


@pytest.mark.parametrize("tamper", ["classes-list", "splits-list", "totals-string", "manifest-dir", "tar-dir",
                                    "idx-binary"])
def test_tampering_is_reported_without_a_traceback(tmp_path, clvr, tamper):
    out = demo_shards(clvr, tmp_path)
    train = out / "train"
    if tamper == "classes-list":
        edit_json(train / "manifest.json", lambda m: m.update(classes=["0", "1"]))
    elif tamper == "splits-list":
        edit_json(out / "manifest.json", lambda m: m.update(splits=["train"]))
    elif tamper == "totals-string":
        edit_json(out / "manifest.json", lambda m: m.update(totals="all of them"))
    elif tamper == "manifest-dir":
        (train / "manifest.json").unlink()
        (train / "manifest.json").mkdir()
    elif tamper == "tar-dir":
        (train / "train-000000.tar").unlink()
        (train / "train-000000.tar").mkdir()
    else:
        (train / "train-000000.idx").write_bytes(b"\xff\xfe\x00binary")
    r = clvr("shard", "verify", out, "--no-progress")
    assert r.code == 1 and "Traceback" not in r.err and r.err.strip()


def test_coco_duplicate_files_and_empty_lists(tmp_path, clvr):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.jpg")
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "./a.jpg"}],
            "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "i.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    assert clvr("shard", "coco", tmp_path / "i.json", images, out, "--no-progress", "--workers", "1").code == 0
    (line,) = read_rejects(out)
    assert "listed again as image id 2" in line["reason"]
    coco["images"] = []
    (tmp_path / "e.json").write_text(json.dumps(coco))
    r = clvr("shard", "coco", tmp_path / "e.json", images, tmp_path / "o2", "--no-progress", "--workers", "1")
    assert r.code == 2 and "no usable images" in r.err
    r = clvr("shard", "coco", images, images, tmp_path / "o3", "--no-progress", "--workers", "1")
    assert r.code == 2 and "cannot be read" in r.err

"""Malformed COCO files: a clear error or a logged reject per entry, never a traceback or a loss."""

from __future__ import annotations

import json

import pytest

from conftest import photo, read_rejects, read_samples


def _write(tmp_path, coco) -> tuple:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for i in range(3):
        photo(i).save(images / f"{i}.jpg")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images


def _base():
    return {"images": [{"id": 1, "file_name": "0.jpg"}, {"id": "b", "file_name": "1.jpg"}],
            "categories": [{"id": 7, "name": "seven"}, {"id": "x", "name": "ex"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},
                            {"id": "two", "image_id": 1, "category_id": "x", "bbox": [2, 2, 5, 5]},
                            {"id": 3, "image_id": "b", "category_id": 7, "bbox": [0, 0, 4, 4]}]}


def test_mixed_id_types_are_fine(tmp_path, clvr):
    path, images = _write(tmp_path, _base())
    out = tmp_path / "out"
    r = clvr("shard", "coco", path, images, out, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    samples = read_samples([out / "shard-000000.tar"])
    assert [json.loads(s["json"])["image_id"] for s in samples] == [1, "b"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(c["id"], c["coco_id"]) for c in manifest["categories"]] == [(0, 7), (1, "x")]
    assert [b["category"] for b in json.loads(samples[0]["json"])["boxes"]] == [0, 1]


@pytest.mark.parametrize("change,what,word", [
    (lambda c: c["images"].append({"id": 1, "file_name": "2.jpg"}), "sample", "listed twice"),
    (lambda c: c["images"].append({"file_name": "2.jpg"}), "sample", "needs an 'id'"),
    (lambda c: c["images"].append({"id": [1], "file_name": "2.jpg"}), "sample", "needs an 'id'"),
    (lambda c: c["annotations"].append({"id": 9, "image_id": [1], "category_id": 7}), "box", "unknown image_id"),
    (lambda c: c["annotations"].append("not an object"), "box", "unknown image_id"),
    (lambda c: c["annotations"].append({"id": 9, "image_id": 1, "category_id": 7, "bbox": [0, 0, 3, 3],
                                        "iscrowd": "no"}), "box", "iscrowd"),
    (lambda c: c["annotations"].append({"id": 9, "image_id": 1, "category_id": 7, "bbox": ["a", 0, 3, 3]}),
     "box", "malformed bbox"),
    (lambda c: c["annotations"].append({"id": 9, "image_id": 1, "category_id": 7}), "box", "malformed bbox"),
])
def test_bad_entries_are_logged_not_fatal(tmp_path, clvr, change, what, word):
    coco = _base()
    change(coco)
    path, images = _write(tmp_path, coco)
    out = tmp_path / "out"
    r = clvr("shard", "coco", path, images, out, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    lines = read_rejects(out)
    assert len(lines) == 1 and lines[0]["what"] == what and word in lines[0]["reason"], lines
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 2


@pytest.mark.parametrize("coco,word", [
    ([1], "expected a JSON object"),
    ({"images": [], "annotations": []}, "no 'categories' list"),
    ({"images": [], "annotations": [], "categories": [{"name": "no id"}]}, "categories[0] needs an 'id'"),
    ({"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 1}]}, "listed twice"),
])
def test_unusable_files_are_a_clear_error(tmp_path, clvr, coco, word):
    path, images = _write(tmp_path, coco)
    r = clvr("shard", "coco", path, images, tmp_path / "out", "--no-progress", "--workers", "1")
    assert r.code == 2 and word in r.err and "Traceback" not in r.err

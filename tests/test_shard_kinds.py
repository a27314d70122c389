"""Every ``clvr shard`` input kind end to end: the samples the plain ``webdataset`` library reads
back (keys, ``index.i64``, ``label.i64``, ``.cls``, ``.json``, boxes, captions, videos), the
manifest, and ``clvr shard verify`` on the result."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clvr.shards.boxes import iou

from conftest import photo, read_rejects, read_samples

FAST = ("--workers", "1", "--no-progress")


# ----------------------------------------------------------------------------- helpers

def i64(b: bytes) -> int:
    assert len(b) == 8
    return struct.unpack("<q", b)[0]


def manifest(d: Path) -> dict:
    return json.loads((Path(d) / "manifest.json").read_text())


def set_samples(d: Path) -> list[dict]:
    """The samples of one shard set, in shard order, checked for the fields every sample has."""
    d = Path(d)
    m = manifest(d)
    out = read_samples([d / s["name"] for s in m["shards"]])
    assert len(out) == m["totals"]["samples"]
    for i, s in enumerate(out):
        assert s["__key__"] == f"{i:09d}"
        assert i64(s["index.i64"]) == i
        meta = json.loads(s["json"])
        assert meta["index"] == i
        lab = i64(s["label.i64"])
        assert int(s["cls"].decode()) == lab == meta["label"]
        if m.get("classes") and lab >= 0:
            assert meta["class_name"] == m["classes"]["names"][lab]
    return out


def meta(s: dict) -> dict:
    return json.loads(s["json"])


def verify_ok(clvr, out: Path) -> None:
    r = clvr("shard", "verify", out, "--no-progress")
    assert r.code == 0, r
    assert "OK" in r.out


def decode_png(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.mode == "RGB"
    return np.asarray(im)


def boxes_of(s: dict) -> tuple[np.ndarray, np.ndarray]:
    coords, cats = s["boxes.f32"], s["boxcls.i64"]
    assert len(coords) % 16 == 0 and len(cats) == len(coords) // 2
    return (np.frombuffer(coords, "<f4").reshape(-1, 4), np.frombuffer(cats, "<i8"))



# ----------------------------------------------------------------------------- images

def test_imagefolder_labels_are_sorted_class_ids(tmp_path, clvr, image_folder):
    out = tmp_path / "out"
    assert clvr("shard", "images", image_folder, out, *FAST).code == 0
    m = manifest(out)
    names = sorted(d.name for d in image_folder.iterdir() if d.is_dir())
    assert m["classes"] == {"names": names, "ids": {n: i for i, n in enumerate(names)}}
    files = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*") if p.is_file())
    got = set_samples(out)
    assert sorted(meta(s)["src"] for s in got) == files
    for s in got:
        src = meta(s)["src"]
        assert i64(s["label.i64"]) == names.index(src.split("/")[0])
        ext = src.rsplit(".", 1)[1]
        assert s[ext] == (image_folder / src).read_bytes()  # 8-bit RGB JPEG/PNG kept byte for byte
    assert m["label_counts"] == {str(i): 6 for i in range(len(names))}
    assert m["rejects"]["rejected_samples"] == 0
    verify_ok(clvr, out)


def test_numeric_class_folders_sort_numerically(tmp_path, clvr):
    src = tmp_path / "src"
    for i, c in enumerate(["10", "2", "1"]):
        (src / c).mkdir(parents=True)
        photo(i).save(src / c / "x.png")
    out = tmp_path / "out"
    assert clvr("shard", "images", src, out, *FAST).code == 0
    assert manifest(out)["classes"]["names"] == ["1", "2", "10"]
    got = {meta(s)["src"]: i64(s["label.i64"]) for s in set_samples(out)}
    assert got == {"1/x.png": 0, "2/x.png": 1, "10/x.png": 2}


def test_flat_folder_is_unlabelled(tmp_path, clvr):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(4):
        photo(i).save(src / f"im{i}.png")
    out = tmp_path / "out"
    assert clvr("shard", "images", src, out, *FAST).code == 0
    m = manifest(out)
    assert m["classes"] is None
    assert m["label_counts"] == {"-1": 4}
    got = set_samples(out)
    assert [meta(s)["src"] for s in got] == [f"im{i}.png" for i in range(4)]
    for i, s in enumerate(got):
        assert i64(s["label.i64"]) == -1 and s["cls"] == b"-1"
        assert "class_name" not in meta(s)
        assert (meta(s)["width"], meta(s)["height"]) == (48, 40)
        assert np.array_equal(decode_png(s["png"]), np.asarray(photo(i)))
    verify_ok(clvr, out)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_lists_with_labels(tmp_path, clvr, fmt):
    (tmp_path / "imgs").mkdir()
    rows = [("imgs/p0.png", "owl"), ("imgs/p1.jpg", "cat"), ("imgs/p2.png", "owl"), ("imgs/p3.jpg", "bee")]
    for i, (p, _) in enumerate(rows):
        photo(i).save(tmp_path / p)
    lst = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        lst.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    else:
        lst.write_text("".join(json.dumps({"path": p, "label": lab}) + "\n" for p, lab in rows))
    out = tmp_path / "out"
    assert clvr("shard", "images", lst, out, *FAST).code == 0
    classes = sorted({lab for _, lab in rows})
    m = manifest(out)
    assert m["classes"]["names"] == classes
    got = set_samples(out)
    assert [meta(s)["src"] for s in got] == [p for p, _ in rows]  # list order kept
    for s, (p, lab) in zip(got, rows):
        assert i64(s["label.i64"]) == classes.index(lab)
        assert meta(s)["class_name"] == lab
        assert s[p.rsplit(".", 1)[1]] == (tmp_path / p).read_bytes()
    assert read_rejects(out) == []
    verify_ok(clvr, out)


def test_val_fraction_split_is_stratified_and_disjoint(tmp_path, clvr):
    src = tmp_path / "src"
    sizes = {"a": 4, "b": 6, "c": 2}
    for ci, (c, n) in enumerate(sizes.items()):
        (src / c).mkdir(parents=True)
        for i in range(n):
            photo(10 * ci + i).save(src / c / f"{i}.png")
    out = tmp_path / "out"
    assert clvr("shard", "images", src, out, *FAST, "--val-fraction", "0.5").code == 0
    root = manifest(out)
    assert set(root["splits"]) == {"train", "val"}
    srcs = {}
    for split in ("train", "val"):
        got = set_samples(out / split)  # indices 0..N-1 within each split
        assert manifest(out / split)["split"] == split
        assert root["splits"][split]["samples"] == len(got)
        srcs[split] = [meta(s)["src"] for s in got]
        per_class = Counter(src_.split("/")[0] for src_ in srcs[split])
        assert per_class == {c: n // 2 for c, n in sizes.items()}  # half of each class
        assert manifest(out / split)["label_counts"] == {str(i): n // 2 for i, n in enumerate(sizes.values())}
    assert not set(srcs["train"]) & set(srcs["val"])
    assert sorted(srcs["train"] + srcs["val"]) == sorted(f"{c}/{i}.png" for c, n in sizes.items()
                                                         for i in range(n))
    assert root["totals"]["samples"] == sum(sizes.values())
    verify_ok(clvr, out)


def test_shard_size_rolls_over(tmp_path, clvr, image_folder):
    out = tmp_path / "out"
    assert clvr("shard", "images", image_folder, out, *FAST, "--shard-size", "4").code == 0
    m = manifest(out)
    n = 18
    assert [s["samples"] for s in m["shards"]] == [4, 4, 4, 4, 2]
    assert [s["first_index"] for s in m["shards"]] == [0, 4, 8, 12, 16]
    first = 0
    for s in m["shards"]:
        tar = out / s["name"]
        assert tar.stat().st_size == s["bytes"] and (out / s["index"]).exists()
        got = read_samples([tar])
        assert len(got) == s["samples"] <= 4
        assert [i64(x["index.i64"]) for x in got] == list(range(first, first + len(got)))
        first += len(got)
    assert len(set_samples(out)) == n
    verify_ok(clvr, out)


def _sample_sizes(tar: Path) -> list[int]:
    """Bytes each sample takes in the tar (headers and padding included), in order."""
    sizes: dict[str, int] = {}
    with tarfile.open(tar) as t:
        for mem in t.getmembers():
            key = mem.name.split(".", 1)[0]
            sizes[key] = sizes.get(key, 0) + 512 + mem.size + (-mem.size % 512)
    return list(sizes.values())


def test_max_shard_bytes_rolls_over(tmp_path, clvr, image_folder):
    whole = tmp_path / "whole"
    assert clvr("shard", "images", image_folder, whole, *FAST).code == 0
    total = manifest(whole)["shards"][0]["bytes"]
    biggest = max(_sample_sizes(whole / manifest(whole)["shards"][0]["name"]))
    limit = total // 4
    assert limit > biggest + 1024  # so every shard can hold at least one sample
    out = tmp_path / "out"
    assert clvr("shard", "images", image_folder, out, *FAST, "--max-shard-bytes", str(limit)).code == 0
    shards = manifest(out)["shards"]
    assert len(shards) >= 4
    tars = [out / s["name"] for s in shards]
    for s, tar in zip(shards, tars):
        assert tar.stat().st_size == s["bytes"] <= limit
    # a new shard starts only when the next sample would not fit in the current one
    for tar, nxt in zip(tars, tars[1:]):
        assert tar.stat().st_size + _sample_sizes(nxt)[0] > limit
    assert sum(s["samples"] for s in shards) == 18
    assert [meta(s)["src"] for s in set_samples(out)] == [meta(s)["src"] for s in set_samples(whole)]
    verify_ok(clvr, out)


def test_felzenszwalb_proposals_find_two_blobs(tmp_path, clvr):
    w, h = 128, 96
    arr = np.full((h, w, 3), 255, np.uint8)
    blobs = [(10, 8, 40, 40), (70, 50, 50, 40)]  # x, y, w, h
    arr[8:48, 10:50] = (220, 30, 30)
    arr[50:90, 70:120] = (30, 30, 220)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(arr).save(src / "blobs.png")
    out = tmp_path / "out"
    assert clvr("shard", "images", src, out, *FAST, "--proposals", "felzenszwalb").code == 0
    (s,) = set_samples(out)
    coords, cats = boxes_of(s)
    assert len(coords) >= 2
    assert (cats == -1).all()
    for x, y, bw, bh in coords:
        assert bw > 0 and bh > 0
        assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
    for blob in blobs:
        assert max(iou(blob, c) for c in coords) > 0.7, (blob, coords)
    m = meta(s)
    assert m["box_source"] == "felzenszwalb"
    assert np.allclose([b["bbox"] for b in m["boxes"]], coords, atol=0.01)
    assert all(b["category"] == -1 for b in m["boxes"])
    assert s["png"] == (src / "blobs.png").read_bytes()
    verify_ok(clvr, out)
    out1 = tmp_path / "out1"
    assert clvr("shard", "images", src, out1, *FAST, "--proposals", "felzenszwalb",
                "--max-proposals", "1").code == 0
    (s1,) = set_samples(out1)
    assert len(boxes_of(s1)[0]) == 1


# ----------------------------------------------------------------------------- coco

COCO_CATS = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    photo(1).save(images / "a.png")                 # 48x40
    photo(2).save(images / "b.jpg", quality=90)     # 48x40
    inst = {
        "categories": COCO_CATS,
        "images": [{"id": 1, "file_name": "a.png", "width": 48, "height": 40},
                   {"id": 2, "file_name": "b.jpg", "width": 48, "height": 40},
                   {"id": 3, "file_name": "missing.png", "width": 48, "height": 40}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [5, 6, 10, 12], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [40, 30, 20, 20], "iscrowd": 0},   # clipped
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5], "iscrowd": 0},     # w = 0
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [100, 100, 10, 10], "iscrowd": 0}, # outside
            {"id": 14, "image_id": 2, "category_id": 3, "bbox": [1, 2, 20, 15], "iscrowd": 1},     # crowd
            {"id": 15, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5], "iscrowd": 0},      # bad cat
            {"id": 16, "image_id": 2, "category_id": 7, "bbox": [2.5, 3.5, 10.25, 8.75], "iscrowd": 0},
            {"id": 17, "image_id": 3, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 18, "image_id": 42, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0},      # no image
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(inst))
    return path, images, inst


def _coco_expectations(inst):
    order = sorted(c["id"] for c in inst["categories"])
    contiguous = {cid: i for i, cid in enumerate(order)}
    return order, contiguous


@pytest.mark.parametrize("keep_crowd", [False, True], ids=["default", "keep-crowd"])
def test_coco_boxes_categories_and_rejects(tmp_path, clvr, coco, keep_crowd):
    path, images, inst = coco
    out = tmp_path / "out"
    extra = ["--keep-crowd"] if keep_crowd else []
    r = clvr("shard", "coco", path, images, out, *FAST, *extra)
    assert r.code == 0, r
    order, contiguous = _coco_expectations(inst)
    names = {c["id"]: c["name"] for c in inst["categories"]}
    m = manifest(out)
    assert m["categories"] == [{"id": i, "coco_id": cid, "name": names[cid]} for i, cid in enumerate(order)]
    got = {meta(s)["src"]: s for s in set_samples(out)}
    assert list(got) == ["a.png", "b.jpg"]

    # a.png: a plain box and one clipped to 48x40; the degenerate one is gone
    coords, cats = boxes_of(got["a.png"])
    assert coords.tolist() == [[5, 6, 10, 12], [40, 30, 8, 10]]
    assert cats.tolist() == [contiguous[3], contiguous[7]]
    assert [b["ann_id"] for b in meta(got["a.png"])["boxes"]] == [10, 11]

    # b.jpg: the crowd box is in the json, and in boxes.f32 only with --keep-crowd
    coords, cats = boxes_of(got["b.jpg"])
    mb = meta(got["b.jpg"])
    assert [(b["ann_id"], b["iscrowd"]) for b in mb["boxes"]] == [(14, 1), (16, 0)]
    assert mb["boxes"][0]["bbox"] == [1, 2, 20, 15] and mb["boxes"][0]["coco_category_id"] == 3
    if keep_crowd:
        assert coords.tolist() == [[1, 2, 20, 15], [2.5, 3.5, 10.25, 8.75]]
        assert cats.tolist() == [contiguous[3], contiguous[7]]
    else:
        assert coords.tolist() == [[2.5, 3.5, 10.25, 8.75]]
        assert cats.tolist() == [contiguous[7]]
    for s in got.values():
        _, c = boxes_of(s)
        assert set(c.tolist()) <= set(range(len(order)))
        assert meta(s)["box_source"] == "coco" and i64(s["label.i64"]) == -1

    # every reject is logged, naming the annotation
    log = read_rejects(out)
    boxes = {(x["action"], x["src"]): x for x in log if x["what"] == "box"}
    assert len([x for x in log if x["what"] == "box"]) == 5
    assert "annotation 11" in boxes[("converted", "a.png")]["reason"]
    assert "clipped" in boxes[("converted", "a.png")]["reason"]
    rej = [x for x in log if x["what"] == "box" and x["action"] == "rejected"]
    assert len(rej) == 4
    by_ann = {a: x for x in rej for a in (12, 13, 15, 18) if f"annotation {a}" in x["src"] + x["reason"]}
    assert set(by_ann) == {12, 13, 15, 18}
    assert by_ann[12]["src"] == "a.png" and "degenerate" in by_ann[12]["reason"]
    assert by_ann[13]["src"] == "b.jpg" and "outside" in by_ann[13]["reason"]
    assert by_ann[15]["src"] == "b.jpg" and "category" in by_ann[15]["reason"]
    assert "image_id" in by_ann[18]["reason"]
    (missing,) = [x for x in log if x["what"] == "sample"]
    assert missing["src"] == "missing.png" and missing["action"] == "rejected"
    assert "missing" in missing["reason"]
    assert m["rejects"]["rejected_samples"] == 1
    assert m["rejects"]["rejected_boxes"] == 4
    assert m["rejects"]["converted_boxes"] == 1
    verify_ok(clvr, out)


def test_coco_boxes_follow_max_side(tmp_path, clvr, coco):
    path, images, inst = coco
    out = tmp_path / "out"
    assert clvr("shard", "coco", path, images, out, *FAST, "--max-side", "24").code == 0
    got = {meta(s)["src"]: s for s in set_samples(out)}
    s = got["a.png"]
    j = meta(s)
    sx, sy = j["width"] / 48, j["height"] / 40
    assert (j["width"], j["height"]) == (24, 20)
    assert Image.open(io.BytesIO(s["png"])).size == (24, 20)
    coords, _ = boxes_of(s)
    want = [[5 * sx, 6 * sy, 10 * sx, 12 * sy], [40 * sx, 30 * sy, 8 * sx, 10 * sy]]  # scaled after clipping
    assert np.allclose(coords, want, atol=1e-3)
    coords, _ = boxes_of(got["b.jpg"])
    assert np.allclose(coords, [[2.5 * sx, 3.5 * sy, 10.25 * sx, 8.75 * sy]], atol=1e-3)
    verify_ok(clvr, out)


# ----------------------------------------------------------------------------- videos

FRAMES, SIDE, FPS = 8, 32, 8


def _frames():
    out = []
    for t in range(FRAMES):
        a = np.zeros((SIDE, SIDE, 3), np.uint8)
        a[..., 0] = 20 + t * 25
        a[..., 2] = 200 - t * 20
        a[t * 3:t * 3 + 8, t * 3:t * 3 + 8] = 255
        out.append(a)
    return out


def make_video(fmt: str, codec: str, pix_fmt: str, options=None) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=FPS)
        s.width = s.height = SIDE
        s.pix_fmt = pix_fmt
        if options:
            s.options = options
        for t, a in enumerate(_frames()):
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = t
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def decode_frames(data: bytes) -> list[np.ndarray]:
    import av

    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


GOOD_VIDEOS = {"a/clip1.webm": "vp9", "a/clip2.mp4": "h264", "b/clip3.mkv": "mjpeg"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "a/clip1.webm").write_bytes(make_video("webm", "libvpx-vp9", "yuv420p",
                                                    {"deadline": "realtime", "cpu-used": "8"}))
    (root / "a/clip2.mp4").write_bytes(make_video("mp4", "libx264", "yuv420p", {"preset": "ultrafast"}))
    (root / "b/clip3.mkv").write_bytes(make_video("matroska", "mjpeg", "yuvj420p"))
    (root / "b/clip4.mov").write_bytes(make_video("mov", "mjpeg", "yuvj420p"))
    (root / "b/empty.mp4").write_bytes(b"")
    (root / "b/noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    return root


def _video_rejects(out) -> dict[str, str]:
    """Rejected videos -> reason, less the two that no option rescues (checked here)."""
    rej = {x["src"]: x["reason"] for x in read_rejects(out) if x["action"] == "rejected"}
    assert "empty" in rej.pop("b/empty.mp4")
    assert "not a readable video" in rej.pop("b/noise.mp4")
    return rej


def test_videos_probe_and_gpu_codec_warning(tmp_path, clvr, videos):
    from clvr.shards.videos import gpu_present

    out = tmp_path / "out"
    r = clvr("shard", "videos", videos, out, *FAST)
    assert r.code == 0, r
    m = manifest(out)
    assert m["classes"]["names"] == ["a", "b"]
    got = {meta(s)["src"]: s for s in set_samples(out)}
    assert set(got) == set(GOOD_VIDEOS)
    for src, codec in GOOD_VIDEOS.items():
        s, j = got[src], meta(got[src])
        ext = src.rsplit(".", 1)[1]
        assert s[ext] == (videos / src).read_bytes()  # kept as it is
        assert j["codec"] == codec and j["container"] == ext
        assert j["frames"] == FRAMES and j["fps"] == pytest.approx(FPS)
        assert (j["width"], j["height"]) == (SIDE, SIDE)
        assert j["cpu_decodable"] is (codec in ("vp9", "mjpeg"))
        assert i64(s["label.i64"]) == ["a", "b"].index(src[0])
    assert m["stats"] == {"codec:h264": 1, "codec:mjpeg": 1, "codec:vp9": 1}
    rest = _video_rejects(out)
    assert set(rest) == {"b/clip4.mov"}
    assert ".mov" in rest["b/clip4.mov"] and "--transcode" in rest["b/clip4.mov"]
    assert m["rejects"]["rejected_samples"] == 3
    # the H.264 clip is named in a warning that tells how to fix it
    assert "warning" in r.err and "h264" in r.err and "--transcode vp9" in r.err
    if not gpu_present():
        assert "no NVIDIA GPU" in r.err
    verify_ok(clvr, out)


def test_videos_transcode_vp9(tmp_path, clvr, videos):
    out = tmp_path / "out"
    r = clvr("shard", "videos", videos, out, *FAST, "--transcode", "vp9")
    assert r.code == 0, r
    sources = {**GOOD_VIDEOS, "b/clip4.mov": "mjpeg"}
    got = {meta(s)["src"]: s for s in set_samples(out)}
    assert set(got) == set(sources)
    for src, codec in sources.items():
        s, j = got[src], meta(got[src])
        assert not set(s) & {"mp4", "mkv", "avi"} and "webm" in s
        assert j["codec"] == "vp9" and j["container"] == "webm" and j["cpu_decodable"] is True
        assert j["frames"] == FRAMES and (j["width"], j["height"]) == (SIDE, SIDE)
        assert j["fps"] == pytest.approx(FPS)
        frames = decode_frames(s["webm"])
        want = decode_frames((videos / src).read_bytes())
        assert len(frames) == len(want) == FRAMES
        for f, g in zip(frames, want):  # same pictures, same order
            assert f.shape == (SIDE, SIDE, 3)
            assert np.abs(f.astype(int) - g.astype(int)).mean() < 12
        if codec == "vp9":
            assert s["webm"] == (videos / src).read_bytes() and "transcoded_from" not in j
        else:
            assert j["transcoded_from"] == codec
    conv = {x["src"]: x["reason"] for x in read_rejects(out) if x["action"] == "converted"}
    assert conv == {src: f"transcoded {codec} -> vp9" for src, codec in sources.items() if codec != "vp9"}
    assert _video_rejects(out) == {}
    m = manifest(out)
    assert m["stats"] == {"codec:vp9": 4}
    assert m["rejects"]["rejected_samples"] == 2 and m["rejects"]["converted_samples"] == 3
    assert "--transcode vp9" not in r.err  # nothing left that needs a GPU
    verify_ok(clvr, out)


# ----------------------------------------------------------------------------- pairs

def test_pairs(tmp_path, clvr):
    (tmp_path / "imgs").mkdir()
    photo(1).save(tmp_path / "imgs/a.png")
    photo(2).save(tmp_path / "imgs/b.jpg", quality=90)
    photo(3).save(tmp_path / "imgs/c.png")
    lines = [json.dumps({"image": "imgs/a.png", "caption": "a red square", "label": "y"}),
             json.dumps({"image": "imgs/b.jpg", "captions": ["first caption", "second caption"], "label": "x"}),
             json.dumps({"image": "imgs/c.png", "caption": "   ", "label": "x"}),
             json.dumps({"image": "imgs/missing.png", "caption": "hello", "label": "y"}),
             "this line is not JSON",
             json.dumps({"image": "imgs/c.png", "text": "third via text", "label": "x"})]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert clvr("shard", "pairs", pairs, out, *FAST).code == 0
    m = manifest(out)
    assert m["classes"]["names"] == ["x", "y"]
    got = set_samples(out)
    assert [(meta(s)["src"], meta(s)["line"]) for s in got] == [("imgs/a.png", 1), ("imgs/b.jpg", 2),
                                                               ("imgs/c.png", 6)]
    a, b, c = got
    assert a["txt"].decode() == "a red square" and i64(a["label.i64"]) == 1
    assert b["txt"].decode() == "first caption\nsecond caption" and i64(b["label.i64"]) == 0
    assert meta(b)["captions"] == ["first caption", "second caption"]
    assert c["txt"].decode() == "third via text" and i64(c["label.i64"]) == 0
    assert a["png"] == (tmp_path / "imgs/a.png").read_bytes()
    assert b["jpg"] == (tmp_path / "imgs/b.jpg").read_bytes()
    log = read_rejects(out)
    assert [(x["src"], x["what"], x["action"]) for x in log] == [
        ("pairs.jsonl:5", "line", "rejected"), ("imgs/c.png", "sample", "rejected"),
        ("imgs/missing.png", "sample", "rejected")]
    assert "JSON" in log[0]["reason"]
    assert "empty caption" in log[1]["reason"] and "line 3" in log[1]["reason"]
    assert "missing" in log[2]["reason"] and "line 4" in log[2]["reason"]
    assert m["rejects"]["rejected_samples"] == 3
    verify_ok(clvr, out)


# ----------------------------------------------------------------------------- demo

def _digit_targets():
    from sklearn.datasets import load_digits

    return load_digits().target.astype(int)


def run_demo(clvr, tmp_path, name, limit):
    out = tmp_path / name
    r = clvr("shard", "demo", name, out, "--limit", str(limit), *FAST)
    assert r.code == 0, r
    root = manifest(out)
    assert set(root["splits"]) == {"train", "val"}
    assert root["classes"]["names"] == [str(d) for d in range(10)]
    got = {split: set_samples(out / split) for split in ("train", "val")}
    assert root["totals"]["samples"] == sum(len(v) for v in got.values())
    return out, got


def check_digit_split(got, limit):
    """Each source digit is in exactly one split, with its true label; val has ~20% of each class."""
    target = _digit_targets()[:limit]
    ids = {}
    for split, samples in got.items():
        ids[split] = []
        for s in samples:
            src = meta(s)["src"]
            assert src.startswith("sklearn-digits/")
            k = int(src.split("/")[1])
            assert i64(s["label.i64"]) == target[k]
            ids[split].append(k)
    assert not set(ids["train"]) & set(ids["val"])
    assert sorted(ids["train"] + ids["val"]) == list(range(limit))
    check_stratified(Counter(target.tolist()), Counter(target[ids["val"]].tolist()))


def check_stratified(n_per_class: Counter, val_per_class: Counter, fraction: float = 0.2):
    assert set(val_per_class) <= set(n_per_class)
    for c, n in n_per_class.items():
        # each class's share of val is its quota, rounded either way; train keeps some of it
        assert abs(val_per_class[c] - fraction * n) < 1, (c, n, val_per_class[c])
        assert val_per_class[c] < n
    assert sum(val_per_class.values()) > 0


def test_demo_digits(tmp_path, clvr):
    from clvr.shards.demo import PALETTE

    out, got = run_demo(clvr, tmp_path, "digits", 60)
    check_digit_split(got, 60)
    for s in got["train"] + got["val"]:
        arr = decode_png(s["png"]).astype(np.float64)
        assert arr.shape == (32, 32, 3)
        # every pixel is a mix of the named ink and background colours
        fg, bg = np.array(PALETTE[meta(s)["ink"]], float), np.array(PALETTE[meta(s)["background"]], float)
        a = ((arr - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg))
        assert (a > -0.02).all() and (a < 1.02).all()
        assert np.abs(bg + a[..., None] * (fg - bg) - arr).max() <= 2.0
        assert a.max() > 0.5 and a.min() < 0.1  # there is ink and there is background
    verify_ok(clvr, out)


def test_demo_digits_captions(tmp_path, clvr):
    from clvr.shards.demo import WORDS

    out, got = run_demo(clvr, tmp_path, "digits-captions", 60)
    check_digit_split(got, 60)
    for s in got["train"] + got["val"]:
        cap = s["txt"].decode()
        lab = i64(s["label.i64"])
        j = meta(s)
        assert j["captions"] == [cap]
        assert WORDS[lab] in cap.split() or str(lab) in cap.split()
        assert j["ink"] in cap and j["background"] in cap
        assert decode_png(s["png"]).shape == (32, 32, 3)
    verify_ok(clvr, out)


def test_demo_digits_objects(tmp_path, clvr):
    out, got = run_demo(clvr, tmp_path, "digits-objects", 60)
    root = manifest(out)
    assert [c["id"] for c in root["categories"]] == list(range(10))
    target = _digit_targets()[:60]
    digits = {}
    for split, samples in got.items():
        digits[split] = set()
        for s in samples:
            coords, cats = boxes_of(s)
            j = meta(s)
            assert 1 <= len(coords) <= 4
            assert decode_png(s["png"]).shape == (96, 96, 3)
            assert ((cats >= 0) & (cats <= 9)).all()
            for (x, y, w, h), c, b in zip(coords, cats, j["boxes"]):
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96
                assert [x, y, w, h] == b["bbox"] and c == b["category"]
                k = int(b["src"].split("/")[1])
                assert c == target[k]  # the box's category is its digit's true class
                digits[split].add(k)
            # the label is the class of the largest digit (largest ink box side)
            side = [max(w, h) for _, _, w, h in coords]
            largest = {int(c) for c, sd in zip(cats, side) if sd == max(side)}
            assert i64(s["label.i64"]) in largest
    assert not digits["train"] & digits["val"]  # no digit drawn in both splits
    verify_ok(clvr, out)


def test_demo_digits_video(tmp_path, clvr):
    out, got = run_demo(clvr, tmp_path, "digits-video", 20)
    check_digit_split(got, 20)
    for s in got["train"] + got["val"]:
        frames = decode_frames(s["webm"])
        assert len(frames) == 16
        assert all(f.shape == (64, 64, 3) for f in frames)
        assert not np.array_equal(frames[0], frames[-1])  # the digit moves
        j = meta(s)
        assert j["frames"] == 16 and j["codec"] == "vp9" and j["cpu_decodable"] is True
    verify_ok(clvr, out)

"""The sample format: encodings, DALI index files, and DALI reading exactly what webdataset reads."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clvr.shards.dali_index import format_index, index_tar, parse_index
from clvr.shards.format import (decode_boxes, decode_int64, encode_boxes, encode_int64, ordered_components,
                                sample_key, split_member_name)
from clvr.shards.manifest import shard_paths
from clvr.shards.shard_writer import ShardWriter

from conftest import encode, photo, read_samples


def test_int64_is_raw_little_endian():
    for v in (0, 1, -1, 2**40 + 3, -(2**63)):
        b = encode_int64(v)
        assert b == np.int64(v).astype("<i8").tobytes()
        assert decode_int64(b) == v
    with pytest.raises(ValueError):
        decode_int64(b"\x00" * 4)


def test_boxes_round_trip_as_float32_and_int64():
    boxes = [{"bbox": [1.5, 2, 3, 4.25], "category": 7}, {"bbox": [0, 0, 10, 20], "category": -1}]
    coords, cats = encode_boxes(boxes)
    assert np.frombuffer(coords, "<f4").reshape(-1, 4).tolist() == [[1.5, 2, 3, 4.25], [0, 0, 10, 20]]
    assert np.frombuffer(cats, "<i8").tolist() == [7, -1]
    assert decode_boxes(coords, cats) == [([1.5, 2, 3, 4.25], 7), ([0, 0, 10, 20], -1)]
    with pytest.raises(ValueError):
        decode_boxes(coords, cats[:8])


def test_member_names_split_at_first_dot_like_dali():
    assert split_member_name("000000012.label.i64") == ("000000012", "label.i64")
    assert split_member_name("dir.x/000000012.jpg") == ("dir.x/000000012", "jpg")
    assert sample_key(12) == "000000012" and "." not in sample_key(10**8)


def test_component_order_is_fixed_whatever_the_dict_order():
    a = ordered_components({"json": b"1", "png": b"2", "index.i64": b"3", "cls": b"4"})
    b = ordered_components({"cls": b"4", "index.i64": b"3", "png": b"2", "json": b"1"})
    assert a == b and [e for e, _ in a] == ["png", "index.i64", "cls", "json"]


def _write(tmp_path, n=7, shard_size=3, **kw):
    w = ShardWriter(tmp_path, prefix="t", max_samples=shard_size, **kw)
    for i in range(n):
        data = encode(photo(i), "PNG")
        w.write(i, sample_key(i), ordered_components({"png": data, "index.i64": encode_int64(i),
                                                      "txt": f"caption {i}".encode() * (i + 1)}))
    return w.close()


def test_index_files_equal_what_dali_wds2idx_writes(tmp_path):
    records = _write(tmp_path)
    assert [r.samples for r in records] == [3, 3, 1]
    tool = Path(sys.executable).parent / "wds2idx"
    for r in records:
        ref = tmp_path / (r.name + ".ref")
        subprocess.run([str(tool), str(tmp_path / r.name), str(ref)], check=True, capture_output=True)
        assert (tmp_path / r.index).read_text() == ref.read_text()
        parsed = parse_index((tmp_path / r.index).read_text())
        assert parsed == index_tar(tmp_path / r.name)
        assert all(c.offset % 512 == 0 for s in parsed for c in s)


def test_index_round_trip_and_defects_are_named():
    text = format_index(parse_index("v1.2 1\npng 512 10 0.png cls 1536 1 0.cls\n"))
    assert text == "v1.2 1\npng 512 10 0.png cls 1536 1 0.cls\n"
    with pytest.raises(ValueError, match="header says 2"):
        parse_index("v1.2 2\npng 512 10 0.png\n", "x.idx")
    with pytest.raises(ValueError, match="x.idx: line 1"):
        parse_index("v1.0 1\npng 512 10 0.png\n", "x.idx")


def test_max_shard_bytes_is_respected(tmp_path):
    records = _write(tmp_path, n=9, shard_size=100, max_bytes=12_000)
    assert len(records) > 1
    for r in records:
        assert (tmp_path / r.name).stat().st_size == r.bytes <= 12_000


def test_sha256_and_bytes_in_records_match_files(tmp_path):
    import hashlib
    for r in _write(tmp_path):
        data = (tmp_path / r.name).read_bytes()
        assert len(data) == r.bytes and hashlib.sha256(data).hexdigest() == r.sha256


def test_dali_reader_returns_exactly_what_webdataset_reads(tmp_path, image_folder, clvr):
    """DALI, given clvr's index files, reads the same samples, indices and labels as webdataset."""
    from nvidia.dali import fn, pipeline_def, types

    out = tmp_path / "out"
    assert clvr("shard", "images", image_folder, out, "--shard-size", "5", "--workers", "1",
                "--no-progress", "--shuffle", "--seed", "3").code == 0
    tars, idxs = shard_paths(out)
    assert len(tars) == 4 and all(i.exists() for i in idxs)
    ref = read_samples(tars)
    n = len(ref)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        img, index, label, cls = fn.readers.webdataset(
            paths=[str(t) for t in tars], index_paths=[str(i) for i in idxs],
            ext=["jpg;png;webp", "index.i64", "label.i64", "cls"],
            dtypes=[types.UINT8, types.INT64, types.INT64, types.UINT8], random_shuffle=False,
            missing_component_behavior="error")
        return img, index, label, cls

    p = pipe()
    p.build()
    got = []
    for _ in range(n):
        img, index, label, cls = p.run()
        got.append((bytes(np.array(img.at(0))), int(np.array(index.at(0))[0]),
                    int(np.array(label.at(0))[0]), bytes(np.array(cls.at(0)))))
    expected = []
    for s in ref:
        image = s.get("jpg", s.get("png"))
        expected.append((image, struct.unpack("<q", s["index.i64"])[0], struct.unpack("<q", s["label.i64"])[0],
                         s["cls"]))
    assert got == expected
    assert sorted(g[1] for g in got) == list(range(n))
    assert [int(g[3]) for g in got] == [g[2] for g in got]


@pytest.mark.parametrize("name,size", [("000000001.jpg", 0), ("000000001.label.i64", 8),
                                       ("a" * 100, 123456789), ("x.json", 511)])
def test_member_headers_parse_as_ustar_with_fixed_metadata(name, size):
    import tarfile

    from clvr.shards.shard_writer import _member_header

    header = _member_header(name, size)
    info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")  # checks the checksum too
    assert len(header) == 512 and header[257:265] == b"ustar\x0000"
    assert (info.name, info.size, info.mtime, info.mode, info.uid, info.gid, info.uname) == \
        (name, size, 0, 0o644, 0, 0, "")
    assert info.isreg()


def test_plain_webdataset_decode_gives_int_labels_and_text(tmp_path, clvr):
    import webdataset as wds

    out = tmp_path / "cap"
    assert clvr("shard", "demo", "digits-captions", out, "--limit", "20", "--no-progress", "--workers", "1").code == 0
    tars, _ = shard_paths(out / "train")
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("pil"))
    assert len(samples) == 16
    for s in samples:
        assert isinstance(s["cls"], int) and s["cls"] == s["json"]["label"]
        assert isinstance(s["txt"], str) and s["txt"] == s["json"]["captions"][0]
        assert s["png"].mode == "RGB" and s["png"].size == (32, 32)
        assert isinstance(s["index.i64"], bytes) and decode_int64(s["index.i64"]) == s["json"]["index"]

"""File lists and labels: odd bytes and odd labels give rejects or stable orders, never a crash."""

from __future__ import annotations

import json
import subprocess
import sys

from clvr.shards.image_sources import class_order

from conftest import photo, read_rejects


def test_a_line_that_is_not_utf8_is_rejected_alone(tmp_path, clvr):
    for i in range(2):
        photo(i).save(tmp_path / f"{i}.png")
    (tmp_path / "list.csv").write_bytes(b"path,label\n0.png,caf\xe9\n1.png,tea\n")
    out = tmp_path / "out"
    r = clvr("shard", "images", tmp_path / "list.csv", out, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    (line,) = read_rejects(out)
    assert line["src"] == "list.csv:2" and line["what"] == "line" and "UTF-8" in line["reason"]
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 1


def test_pairs_with_a_non_utf8_caption_line(tmp_path, clvr):
    photo(0).save(tmp_path / "a.png")
    photo(1).save(tmp_path / "b.png")
    (tmp_path / "pairs.jsonl").write_bytes(b'{"image": "a.png", "caption": "caf\xe9"}\n'
                                           b'{"image": "b.png", "caption": "a cup"}\n')
    out = tmp_path / "out"
    r = clvr("shard", "pairs", tmp_path / "pairs.jsonl", out, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    (line,) = read_rejects(out)
    assert line["src"] == "pairs.jsonl:1" and "UTF-8" in line["reason"]


def test_class_order_is_numeric_stable_and_total():
    assert class_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_order(["1", "01", "-3"]) == ["-3", "01", "1"]
    assert class_order(["b", "²", "a"]) == ["a", "b", "²"]  # a superscript digit is not an integer
    code = "from clvr.shards.image_sources import class_order; print(class_order(['1', '01', '001', '2']))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert outs == {"['001', '01', '1', '2']\n"}


def test_max_shard_bytes_below_one_sample_is_a_usage_error(tmp_path, clvr, image_folder):
    r = clvr("shard", "images", image_folder, tmp_path / "out", "--max-shard-bytes", "1000")
    assert r.code == 2 and "smallest possible shard" in r.err
    assert not (tmp_path / "out").exists()


def test_a_path_listed_twice_is_kept_once(tmp_path, clvr):
    photo(0).save(tmp_path / "c.png")
    photo(1).save(tmp_path / "d.png")
    (tmp_path / "list.csv").write_text("c.png,cat\nd.png,dog\n./c.png,dog\n")
    out = tmp_path / "out"
    assert clvr("shard", "images", tmp_path / "list.csv", out, "--no-progress", "--workers", "1").code == 0
    (line,) = read_rejects(out)
    assert line["src"] == "list.csv:3" and "again (first on line 1)" in line["reason"]
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 2


def test_pair_labels_and_captions_are_checked(tmp_path, clvr):
    photo(0).save(tmp_path / "a.png")
    lines = ['{"image": "a.png", "caption": "one", "label": 3}',
             '{"image": "a.png", "caption": "two", "label": 3.0}',
             '{"image": "a.png", "caption": {"text": "x"}, "label": 3}',
             '{"image": "a.png", "caption": "four", "label": [3]}']
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert clvr("shard", "pairs", tmp_path / "p.jsonl", out, "--no-progress", "--workers", "1").code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["classes"]["names"] == ["3"] and m["totals"]["samples"] == 2
    reasons = {r["src"]: r["reason"] for r in read_rejects(out)}
    assert "strings" in reasons["p.jsonl:3"] and "'label' must be" in reasons["p.jsonl:4"]
    (tmp_path / "q.jsonl").write_text('{"image": "a.png", "caption": "x", "label": 1}\n'
                                      '{"image": "a.png", "caption": "y"}\n')
    r = clvr("shard", "pairs", tmp_path / "q.jsonl", tmp_path / "out2", "--no-progress", "--workers", "1")
    assert r.code == 2 and "label every pair or none" in r.err

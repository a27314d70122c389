"""Whole runs: determinism, --workers, resuming interrupted runs, the output lock, --overwrite, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clvr.shards.lock import LOCK_NAME

from conftest import demo_shards, edit_json, read_samples


def _files(out: Path) -> dict[str, bytes]:
    """Every shard and index file under OUT, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.suffix in (".tar", ".idx")}


def test_same_seed_gives_byte_identical_shards(tmp_path, image_folder, clvr):
    args = ["--shard-size", "4", "--shuffle", "--seed", "5", "--val-fraction", "0.34", "--no-progress",
            "--workers", "1"]
    assert clvr("shard", "images", image_folder, tmp_path / "a", *args).code == 0
    assert clvr("shard", "images", image_folder, tmp_path / "b", *args).code == 0
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a and a == b
    args[4] = "6"  # another seed shuffles differently
    assert clvr("shard", "images", image_folder, tmp_path / "c", *args).code == 0
    assert _files(tmp_path / "c") != a


def test_workers_2_equals_workers_1(tmp_path, clvr):
    common = ["--limit", "90", "--shard-size", "25", "--shuffle", "--no-progress"]
    assert clvr("shard", "demo", "digits-objects", tmp_path / "w1", *common, "--workers", "1").code == 0
    assert clvr("shard", "demo", "digits-objects", tmp_path / "w2", *common, "--workers", "2").code == 0
    w1, w2 = _files(tmp_path / "w1"), _files(tmp_path / "w2")
    assert len(w1) == 8 and w1 == w2  # train: 3 shards, val: 1 shard, each a tar and an idx


def test_indices_are_unique_stable_and_keyed(tmp_path, image_folder, clvr):
    out = tmp_path / "o"
    assert clvr("shard", "images", image_folder, out, "--shard-size", "5", "--no-progress",
                "--workers", "1").code == 0
    samples = read_samples(sorted(out.glob("*.tar")))
    idx = [int.from_bytes(s["index.i64"], "little", signed=True) for s in samples]
    assert idx == list(range(18))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in idx]
    metas = [json.loads(s["json"]) for s in samples]
    assert [m["index"] for m in metas] == idx
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["first_index"] for s in manifest["shards"]] == [0, 5, 10, 15]
    assert manifest["totals"]["samples"] == 18 and manifest["seed"] == 0
    assert manifest["command"][:3] == ["clvr", "shard", "images"]
    assert manifest["components"]["jpg"] + manifest["components"]["png"] == 18


def _cmd(out, *extra):
    return [sys.executable, "-m", "clvr", "shard", "demo", "digits", str(out), "--shard-size", "40",
            "--workers", "1", "--no-progress", *extra]


def _wait_for_shards(out: Path, proc, at_least: int, timeout=60.0) -> None:
    journal = out / ".clvr-progress.json"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if journal.exists():
            try:
                state = json.loads(journal.read_text())
                if sum(len(s["shards"]) for s in state["splits"].values()) >= at_least:
                    return
            except ValueError:
                pass
        assert proc.poll() is None, "the run finished before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError("no shard was finished in time")


def test_killed_run_is_not_whole_and_rerun_resumes_to_identical_output(tmp_path, clvr):
    ref = tmp_path / "ref"
    assert clvr("shard", "demo", "digits", ref, "--shard-size", "40", "--workers", "1", "--no-progress").code == 0

    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_shards(out, proc, at_least=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert (out / LOCK_NAME).exists()  # a stale lock: its process is gone
    v = clvr("shard", "verify", out, "--no-progress")
    assert v.code != 0 and "no manifest" in v.err

    r = subprocess.run(_cmd(out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert _files(out) == _files(ref)
    assert (out / "rejects.jsonl").read_bytes() == (ref / "rejects.jsonl").read_bytes()
    m_out = json.loads((out / "train" / "manifest.json").read_text())
    m_ref = json.loads((ref / "train" / "manifest.json").read_text())
    for k in ("shards", "totals", "components", "label_counts"):
        assert m_out[k] == m_ref[k]
    assert not (out / LOCK_NAME).exists() and not list(out.rglob("*.tmp"))
    assert clvr("shard", "verify", out, "--no-progress").code == 0


def test_ctrl_c_leaves_nothing_whole_and_releases_the_lock(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_shards(out, proc, at_least=1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err
    assert not (out / "manifest.json").exists()
    assert not (out / LOCK_NAME).exists()
    assert not list(out.rglob("*.tmp"))


def test_no_resume_starts_over(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_shards(out, proc, at_least=2)
    proc.kill()
    proc.wait()
    r = subprocess.run(_cmd(out, "--no-resume"), capture_output=True, text=True)
    assert r.returncode == 0 and "resuming" not in r.stderr and "starting over" in r.stderr


HOLD_LOCK = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_second_writer_is_refused_while_the_first_runs(tmp_path, clvr):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = clvr("shard", "demo", "digits", out, "--limit", "20", "--no-progress", "--workers", "1")
        assert r.code == 2 and "another 'clvr shard' is writing" in r.err and str(holder.pid) in r.err
        r = clvr("shard", "demo", "digits", out, "--limit", "20", "--no-progress", "--workers", "1",
                 "--overwrite")
        assert r.code == 2, "a live writer is never overwritten"
    finally:
        holder.kill()
        holder.wait()
    r = clvr("shard", "demo", "digits", out, "--limit", "20", "--no-progress", "--workers", "1")
    assert r.code == 0, r.err  # the holder is gone, and so is its lock


@pytest.mark.parametrize("held,written", [("nx", "nx/train"), ("nx/train", "nx")])
def test_a_writer_above_or_below_is_refused_by_name(tmp_path, clvr, held, written):
    (tmp_path / held).mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / held / LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = clvr("shard", "demo", "digits", tmp_path / written, "--limit", "20", "--no-progress", "--workers", "1")
        where = "above" if len(held) < len(written) else "inside"
        assert r.code == 2, r.err
        assert (f"another 'clvr shard' is writing into {tmp_path / held}, a folder {where} it (pid {holder.pid}"
                in r.err)
        assert not (tmp_path / written / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    r = clvr("shard", "demo", "digits", tmp_path / written, "--limit", "20", "--no-progress", "--workers", "1")
    assert r.code == 0, r.err  # the other is gone (its file left behind does not block)


def test_a_lock_file_left_behind_does_not_block(tmp_path, clvr):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("")  # e.g. a writer killed between creating and filling it
    r = clvr("shard", "demo", "digits", out, "--limit", "20", "--no-progress", "--workers", "1")
    assert r.code == 0, r.err


def test_complete_output_needs_overwrite(tmp_path, clvr):
    out = tmp_path / "out"
    args = ["shard", "demo", "digits", out, "--limit", "30", "--no-progress", "--workers", "1"]
    assert clvr(*args).code == 0
    r = clvr(*args)
    assert r.code == 2 and "--overwrite" in r.err
    r = clvr(*args[:-2], "--workers", "1", "--overwrite", "--shard-size", "7")
    assert r.code == 0
    m = json.loads((out / "train" / "manifest.json").read_text())
    assert [s["samples"] for s in m["shards"]] == [7, 7, 7, 3]
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [f"train-00000{i}.tar" for i in range(4)]
    assert clvr("shard", "verify", out, "--no-progress").code == 0


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "bad_index", "extra_file", "tmp_left"])
def test_verify_names_each_defect(tmp_path, clvr, damage):
    out = tmp_path / "out"
    assert clvr("shard", "demo", "digits", out, "--limit", "30", "--no-progress", "--workers", "1").code == 0
    tar = out / "train" / "train-000000.tar"
    if damage == "flip_byte":
        data = bytearray(tar.read_bytes())
        data[600] ^= 0xFF  # inside the first image
        tar.write_bytes(bytes(data))
        expect = "sha256"
    elif damage == "truncate":
        tar.write_bytes(tar.read_bytes()[:5000])
        expect = "bytes, manifest says"
    elif damage == "bad_index":
        idx = tar.with_suffix(".idx")
        idx.write_text(idx.read_text().replace("png 512", "png 1024", 1))
        expect = "does not match the members"
    elif damage == "extra_file":
        (out / "train" / "train-000009.tar").write_bytes(b"")
        expect = "not listed in the manifest"
    else:
        (out / "train" / "train-000001.tar.tmp").write_bytes(b"x")
        expect = "leftover temporary file"
    r = clvr("shard", "verify", out, "--no-progress")
    assert r.code == 1 and expect in r.err, r.err


def test_verify_sample_and_info(tmp_path, clvr):
    out = tmp_path / "out"
    assert clvr("shard", "demo", "digits-captions", out, "--limit", "40", "--no-progress",
                "--workers", "1").code == 0
    assert clvr("shard", "verify", out, "--sample", "5", "--no-progress").code == 0
    r = clvr("shard", "info", out)
    assert r.code == 0
    assert "[train] 32 samples" in r.out and "[val] 8 samples" in r.out and "txt (32)" in r.out
    assert "command: clvr shard demo digits-captions" in r.out


def test_verify_decodes_samples_that_no_verify_let_through(tmp_path, clvr):
    from conftest import encode, photo
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    data = encode(noise, "JPEG", quality=90)
    (src / "broken.jpg").write_bytes(data[: len(data) // 2])
    photo(1).save(src / "fine.jpg")
    out = tmp_path / "out"
    assert clvr("shard", "images", src, out, "--no-verify", "--no-progress", "--workers", "1").code == 0
    r = clvr("shard", "verify", out, "--no-progress")
    assert r.code == 1
    assert "000000000.jpg: does not decode" in r.err and "truncated" in r.err
    assert "000000001" not in r.err


def test_out_inside_src_is_refused(tmp_path, image_folder, clvr):
    r = clvr("shard", "images", image_folder, image_folder / "shards", "--no-progress", "--workers", "1")
    assert r.code == 2 and "inside SRC" in r.err
    assert not (image_folder / "shards").exists()


def test_odd_file_names_and_symlink_loops(tmp_path, clvr):
    """Names that are not UTF-8 are kept (escaped in JSON); a link back up the tree ends the walk."""
    import os

    from conftest import photo

    src = tmp_path / "src" / "cat"
    src.mkdir(parents=True)
    photo(1).save(src / "plain.png")
    photo(2).save(os.fsencode(src) + b"/bad\xffname.png")
    (src / "loop").symlink_to(src.parent, target_is_directory=True)
    out = tmp_path / "out"
    r = clvr("shard", "images", tmp_path / "src", out, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    samples = read_samples(sorted(out.glob("*.tar")))
    srcs = sorted(json.loads(s["json"])["src"] for s in samples)
    assert srcs == ["cat/bad\udcffname.png", "cat/plain.png"]
    assert clvr("shard", "verify", out, "--no-progress").code == 0


def test_ctrl_c_in_a_terminal_stops_workers_quietly(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the workers must leave it to the parent."""
    out = tmp_path / "out"
    cmd = _cmd(out)
    cmd[cmd.index("--workers") + 1] = "2"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for_shards(out, proc, at_least=1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (out / "manifest.json").exists() and not (out / LOCK_NAME).exists()
    assert not list(out.rglob("*.tmp"))


def test_verify_checks_the_root_manifest_against_the_splits(tmp_path, clvr):
    out = demo_shards(clvr, tmp_path, limit=50, shard_size=15)
    train = out / "train" / "manifest.json"
    # drop the last train shard everywhere but in the root manifest
    m = json.loads(train.read_text())
    last = m["shards"].pop()
    (out / "train" / last["name"]).unlink()
    (out / "train" / last["index"]).unlink()
    m["totals"] = {"samples": sum(s["samples"] for s in m["shards"]), "shards": len(m["shards"]),
                   "bytes": sum(s["bytes"] for s in m["shards"])}
    train.write_text(json.dumps(m))
    r = clvr("shard", "verify", out, "--no-progress")
    assert r.code == 1 and "splits.train.samples = 40" in r.err


@pytest.mark.parametrize("path,word", [("train", "holds split 'train'"), ("../elsewhere", "must be a sub-folder")])
def test_verify_refuses_split_paths_that_point_elsewhere(tmp_path, clvr, path, word):
    out = demo_shards(clvr, tmp_path, limit=50, shard_size=15)
    edit_json(out / "manifest.json", lambda m: m["splits"]["val"].update(path=path))
    r = clvr("shard", "verify", out, "--no-progress")
    assert r.code == 1 and word in r.err


@pytest.mark.parametrize("change,word", [
    (lambda m: m["shards"][0].pop("sha256"), "is not a sha256 digest"),
    (lambda m: m["shards"][0].update(samples="15"), "is not a count"),
    (lambda m: m["shards"][0].update(name="../../etc/passwd"), "is not a file name in the set"),
    (lambda m: m["totals"].update(bytes=1), "totals.bytes = 1"),
    (lambda m: m.update(format_version="1"), "format_version must be an integer"),
])
def test_verify_and_info_report_malformed_manifests(tmp_path, clvr, change, word):
    out = demo_shards(clvr, tmp_path, limit=50, shard_size=15)
    edit_json(out / "train" / "manifest.json", change)
    r = clvr("shard", "verify", out, "--no-progress")
    assert r.code == 1 and word in r.err and "Traceback" not in r.err
    r = clvr("shard", "info", out)
    assert r.code == 2 and word in r.err


def test_killing_the_writer_kills_its_workers_and_frees_the_lock(tmp_path):
    import psutil

    out = tmp_path / "out"
    cmd = _cmd(out)
    cmd[cmd.index("--workers") + 1] = "2"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_shards(out, proc, at_least=2)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "orphaned workers would keep the output lock"
    r = subprocess.run(_cmd(out), capture_output=True, text=True)
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr

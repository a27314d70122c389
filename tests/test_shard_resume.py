"""Resuming: a run interrupted after any shard, with rejects on the way, resumes to the same bytes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from clvr.shards.errors import Reject, ShardError
from clvr.shards.job import Item, JobConfig, Prepared, Split, run_job
from clvr.shards.lock import LOCK_NAME


class Prepare:
    """Every 4th item is rejected, every 5th converted; raises KeyboardInterrupt at ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at

    def __call__(self, item: Item) -> Prepared:
        n = int(item.src.split("-")[1])
        if n == self.stop_at:
            raise KeyboardInterrupt
        if n % 4 == 3:
            raise Reject(f"item {n} is bad")
        notes = [("sample", "converted", f"item {n} converted")] if n % 5 == 0 else []
        return Prepared({"txt": f"payload {n}".encode() * (n % 7 + 1)}, {"n": n}, notes)


def _cfg(out: Path, **kw) -> JobConfig:
    kw.setdefault("workers", 1)
    return JobConfig(kind="test", out=out, command=["test"], options={"v": 1}, shard_size=3,
                     progress=False, **kw)


def _splits(split: bool = True):
    items = [Item(f"item-{i}", i % 3) for i in range(40)]
    return [Split("train", items[:28]), Split("val", items[28:])] if split else [Split(None, items)]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "manifest.json"}


@pytest.mark.parametrize("split", [True, False], ids=["split", "unsplit"])
@pytest.mark.parametrize("stop_at", [2, 7, 16, 27, 30, 39])
def test_interrupt_anywhere_then_resume_gives_identical_output(tmp_path, stop_at, split):
    ref = tmp_path / "ref"
    run_job(_cfg(ref), _splits(split), Prepare(), log=lambda m: None)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out), _splits(split), Prepare(stop_at), log=lambda m: None)
    assert not (out / "manifest.json").exists() and not (out / LOCK_NAME).exists()
    assert not list(out.rglob("*.tmp"))
    messages = []
    result = run_job(_cfg(out), _splits(split), Prepare(), log=messages.append)
    assert result.resumed == (stop_at > 3)  # a shard of 3 accepted items was finished before the stop
    assert _snapshot(out) == _snapshot(ref)
    m_out = json.loads((out / "manifest.json").read_text())
    m_ref = json.loads((ref / "manifest.json").read_text())
    assert m_out == m_ref
    rejected = [n for n in range(40) if n % 4 == 3]
    converted = [n for n in range(40) if n % 5 == 0 and n % 4 != 3]
    assert m_out["rejects"]["rejected_samples"] == len(rejected)
    assert m_out["rejects"]["converted_samples"] == len(converted)
    assert m_out["totals"]["samples"] == 40 - len(rejected)
    for name in ("train", "val") if split else ():
        a = json.loads((out / name / "manifest.json").read_text())
        b = json.loads((ref / name / "manifest.json").read_text())
        assert a == b


def test_changed_job_starts_over_instead_of_resuming(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out), _splits(), Prepare(20), log=lambda m: None)
    messages = []
    cfg = _cfg(out)
    cfg.options = {"v": 2}
    result = run_job(cfg, _splits(), Prepare(), log=messages.append)
    assert not result.resumed and any("starting over" in m for m in messages)


def test_a_tampered_partial_run_starts_over(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out), _splits(), Prepare(20), log=lambda m: None)
    (out / "train" / "train-000000.tar").write_bytes(b"truncated")
    messages = []
    result = run_job(_cfg(out), _splits(), Prepare(), log=messages.append)
    assert not result.resumed and any("missing or changed" in m for m in messages)


def test_overwrite_removes_old_split_folders_contents(tmp_path):
    out = tmp_path / "out"
    run_job(_cfg(out), _splits(), Prepare(), log=lambda m: None)
    items = [Item(f"item-{i}") for i in range(5)]
    run_job(_cfg(out, overwrite=True), [Split(None, items)], Prepare(), log=lambda m: None)
    assert not list((out / "train").iterdir()) and not list((out / "val").iterdir())
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 4


def _crash(item: Item) -> Prepared:
    if item.src == "item-9":
        os._exit(3)  # a decoder that takes the whole worker process down
    return Prepared({"txt": item.src.encode()})


def test_a_dying_worker_is_a_clear_error_not_a_hang(tmp_path):
    items = [Item(f"item-{i}") for i in range(40)]
    with pytest.raises(ShardError, match="worker process died while preparing") as info:
        run_job(_cfg(tmp_path / "out", workers=2), [Split(None, items)], _crash, log=lambda m: None)
    lo, hi = re.search(r"preparing item-(\d+) \.\. item-(\d+)", str(info.value)).groups()
    assert int(lo) <= 9 <= int(hi), "the message names the range that holds the input"
    assert not (tmp_path / "out" / LOCK_NAME).exists()


class FilePrepare(Prepare):
    """Reads ``root/item-N.txt``; the payload is the file's content."""

    def __init__(self, root: Path, stop_at: int | None = None):
        super().__init__(stop_at)
        self.root = root

    def input_path(self, item: Item) -> str:
        return str(self.root / f"{item.src}.txt")

    def __call__(self, item: Item) -> Prepared:
        n = int(item.src.split("-")[1])
        if n == self.stop_at:
            raise KeyboardInterrupt
        text = Path(self.input_path(item)).read_text()
        if text == "bad":
            raise Reject("bad content")
        return Prepared({"txt": text.encode()}, {"n": n})


def test_inputs_changed_since_the_interruption_start_over(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(40):
        (root / f"item-{i}.txt").write_text("bad" if i == 4 else f"content {i}")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out), _splits(False), FilePrepare(root, stop_at=20), log=lambda m: None)
    (root / "item-4.txt").write_text("fixed now")  # a consumed input changed (it was rejected)
    os.utime(root / "item-4.txt", ns=(1, 1))
    messages = []
    result = run_job(_cfg(out), _splits(False), FilePrepare(root), log=messages.append)
    assert not result.resumed and any("input files changed" in m for m in messages)
    ref = tmp_path / "ref"
    run_job(_cfg(ref), _splits(False), FilePrepare(root), log=lambda m: None)
    assert _snapshot(out) == _snapshot(ref)
    assert result.samples == 40 and result.rejected == 0


def test_unchanged_inputs_resume(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(40):
        (root / f"item-{i}.txt").write_text(f"content {i}")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out), _splits(False), FilePrepare(root, stop_at=20), log=lambda m: None)
    result = run_job(_cfg(out), _splits(False), FilePrepare(root), log=lambda m: None)
    assert result.resumed and result.samples == 40


def test_user_files_in_out_are_never_deleted(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mine = {"backup.tar": b"important", "notes.idx": b"x", "download.tmp": b"y", "shard-1.tar": b"z",
            "train-000000.tar.bak": b"w"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    run_job(_cfg(out), _splits(False), Prepare(), log=lambda m: None)
    run_job(_cfg(out, overwrite=True), _splits(True), Prepare(), log=lambda m: None)
    for name, data in mine.items():
        assert (out / name).read_bytes() == data


def test_foreign_shard_files_need_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"someone else's")
    with pytest.raises(ShardError, match="no manifest or interrupted run accounts for"):
        run_job(_cfg(out), _splits(False), Prepare(), log=lambda m: None)
    assert (out / "shard-000000.tar").read_bytes() == b"someone else's"
    run_job(_cfg(out, overwrite=True), _splits(False), Prepare(), log=lambda m: None)
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 30


class RejectTrain(Prepare):
    """Rejects every train item, so the train split finishes without a single shard."""

    def __call__(self, item: Item) -> Prepared:
        if int(item.src.split("-")[1]) < 28 and item.src != f"item-{self.stop_at}":
            raise Reject("train is all bad")
        return super().__call__(item)


def test_a_split_with_no_sample_does_not_spoil_the_resume(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out), _splits(), RejectTrain(38), log=lambda m: None)
    result = run_job(_cfg(out), _splits(), RejectTrain(), log=lambda m: None)
    assert result.resumed
    ref = tmp_path / "ref"
    run_job(_cfg(ref), _splits(), RejectTrain(), log=lambda m: None)
    assert _snapshot(out) == _snapshot(ref)

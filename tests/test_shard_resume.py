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


def _splits():
    items = [Item(f"item-{i}", i % 3) for i in range(40)]
    return [Split("train", items[:28]), Split("val", items[28:])]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != "manifest.json"}


@pytest.mark.parametrize("stop_at", [2, 7, 16, 27, 30, 39])
def test_interrupt_anywhere_then_resume_gives_identical_output(tmp_path, stop_at):
    ref = tmp_path / "ref"
    run_job(_cfg(ref), _splits(), Prepare(), log=lambda m: None)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(out), _splits(), Prepare(stop_at), log=lambda m: None)
    assert not (out / "manifest.json").exists() and not (out / LOCK_NAME).exists()
    assert not list(out.rglob("*.tmp"))
    messages = []
    result = run_job(_cfg(out), _splits(), Prepare(), log=messages.append)
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
    for split in ("train", "val"):
        a = json.loads((out / split / "manifest.json").read_text())
        b = json.loads((ref / split / "manifest.json").read_text())
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

"""Checkpoints: atomic writes that survive interruption, keep-last-k, finding and resuming, RNG."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clvr.methods import checkpoint
from clvr.methods.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                     resolve_resume, rng_state, save_checkpoint, set_rng_state)


def steps(run_dir) -> list[int]:
    return [checkpoint.checkpoint_step(p) for p in list_checkpoints(run_dir)]


def test_save_writes_the_named_file_and_loads_back(tmp_path):
    state = {"step": 1234, "model": {"w": torch.arange(6.0).view(2, 3)}, "note": "x"}
    path = save_checkpoint(tmp_path, 1234, state)
    assert path == tmp_path / "checkpoints" / "step-00001234.pt"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1234 and loaded["note"] == "x"
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert sorted(p.name for p in path.parent.iterdir()) == ["step-00001234.pt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_save_leaves_no_temporary_file_and_earlier_checkpoints_intact(tmp_path, monkeypatch, error):
    save_checkpoint(tmp_path, 1, {"a": 1})
    save_checkpoint(tmp_path, 2, {"a": 2})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise error("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    for step in (2, 3):                        # overwriting a step, and a new one
        with pytest.raises(error, match="disk full"):
            save_checkpoint(tmp_path, step, {"a": 99}, keep=1)
    monkeypatch.undo()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000001.pt", "step-00000002.pt"]
    assert load_checkpoint(folder / "step-00000001.pt") == {"a": 1}
    assert load_checkpoint(folder / "step-00000002.pt") == {"a": 2}


def test_keeps_the_newest_k_and_never_the_one_just_written(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert steps(tmp_path) == [4, 5]
    save_checkpoint(tmp_path, 6, {}, keep=1)
    assert steps(tmp_path) == [6]
    # a run resumed from an earlier step: later (stale) checkpoints outrank it, but it stays
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {}, keep=3)
    save_checkpoint(tmp_path, 15, {}, keep=2)
    assert steps(tmp_path) == [15, 30]
    for keep in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="keep"):
            save_checkpoint(tmp_path, 40, {}, keep=keep)
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, -1, {})


def test_list_and_latest_ignore_other_files(tmp_path):
    assert list_checkpoints(tmp_path) == [] and latest_checkpoint(tmp_path) is None
    assert list_checkpoints(tmp_path / "nowhere") == []
    save_checkpoint(tmp_path, 2, {})
    save_checkpoint(tmp_path, 100_000_000, {})        # past 8 digits: still ordered by step
    folder = tmp_path / "checkpoints"
    for junk in ("step-00000003.pt.4242.tmp", "step-3.pt", "step-0000000x.pt", "notes.txt",
                 "step-00000005.pt.bak", "xstep-00000007.pt"):
        (folder / junk).write_bytes(b"junk")
    (folder / "step-00000009.pt").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002.pt", "step-100000000.pt"]
    assert latest_checkpoint(tmp_path) == folder / "step-100000000.pt"


def test_a_truncated_checkpoint_is_an_error_naming_it_and_what_to_do(tmp_path):
    path = save_checkpoint(tmp_path, 7, {"model": {"w": torch.randn(64, 64)}})
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b"", b"not a checkpoint at all"):
        path.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=r"step-00000007\.pt.*truncated or corrupt.*--resume PATH"):
            load_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match=r"step-00000007\.pt holds a list"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    assert issubclass(CheckpointError, ValueError)


def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    assert resolve_resume(run, None) is None and resolve_resume(run, "") is None
    assert resolve_resume(run, "auto") is None                   # nothing yet: a fresh start
    save_checkpoint(run, 5, {})
    last = save_checkpoint(run, 9, {})
    assert resolve_resume(run, "auto") == last
    first = run / "checkpoints" / "step-00000005.pt"
    assert resolve_resume(run, str(first)) == first
    assert resolve_resume(tmp_path / "other", str(run)) == last  # another run's directory
    with pytest.raises(CheckpointError, match=r"--resume .*step-00000004\.pt: no such checkpoint"):
        resolve_resume(run, str(run / "checkpoints" / "step-00000004.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoints"):
        resolve_resume(run, str(tmp_path / "empty"))


def draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randint(0, 1000, (4,)).tolist()


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)              # somewhere mid-stream
    path = save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    expected = draws()
    assert draws() != expected                                    # the streams moved on
    set_rng_state(load_checkpoint(path)["rng"])
    assert draws() == expected
    with pytest.raises(ValueError, match="numpy"):
        set_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})

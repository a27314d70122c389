"""Issue 21, part 4: a resume compares the checkpoint's settings with the new run's. Settings
that change what the saved position or state means (batch, seed, data set, method...) are refused
by name with both values unless ``--resume-changed`` accepts them; ``config.yaml`` is left alone
when refused; ``metrics.jsonl`` holds each step once after a resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--set", "model.backbone=tiny", "--set", "model.dim=16", "--set", "data.recipe=simclr-cifar",
        "--set", "progress=false", "--set", "preset=paper"]
B8 = ["--set", "data.batch_size=8"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = make_demo(tmp_path_factory.mktemp("digits") / "d", limit=40)
    return d / "train", d / "val"           # 32 and 8 samples


def steps_of(run) -> list:
    return [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()
            if "event" not in json.loads(x)]


def test_a_changed_batch_or_seed_is_refused_by_name_and_config_yaml_kept(clvr, sets, tmp_path):
    train, _ = sets
    run = tmp_path / "run"
    r = clvr("train", "--method", "simclr", *TINY, *B8, "--data", train, "--out", run, "--set", "max_steps=2")
    assert r.code == 0, r.err
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    before = (run / "config.yaml").read_bytes()
    r = clvr("train", "--method", "simclr", *TINY, "--set", "data.batch_size=16", "--set", "seed=7",
             "--data", train, "--out", run, "--set", "max_steps=4", "--resume", "auto")
    assert r.code == 2
    assert "data.batch_size: 8 -> 16" in r.err and "seed: 0 -> 7" in r.err
    assert "--resume-changed data.batch_size seed" in r.err
    assert "Traceback" not in r.err and "building the DALI pipeline" not in r.err      # before heavy work
    assert (run / "config.yaml").read_bytes() == before
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002.pt"]


def test_an_accepted_batch_change_keeps_the_images_seen_and_renumbers_steps(clvr, sets, tmp_path):
    train, _ = sets
    run = tmp_path / "run"
    r = clvr("train", "--method", "simclr", *TINY, *B8, "--data", train, "--out", run, "--set", "epochs=2",
             "--set", "max_steps=6", "--set", "log_every=1")
    assert r.code == 0, r.err                       # 4 steps of 8 per epoch: step 6 = epoch 1, 16 images in
    r = clvr("train", "--method", "simclr", *TINY, "--set", "data.batch_size=16", "--data", train, "--out", run,
             "--set", "epochs=2", "--set", "log_every=1", "--resume", "auto", "--resume-changed", "data.batch_size")
    assert r.code == 0, r.err
    assert "continues as step 3 (2 steps of 16 images)" in r.err          # epoch 1, 16 images = 1 step of 16
    assert (run / "checkpoints.before-step-6" / "step-00000006.pt").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000004.pt"]
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert events[-1]["event"] == "resumed" and events[-1]["accepted"] == {"data.batch_size": [8, 16]}
    assert steps_of(run) == [1, 2, 3, 4]                   # 4, 5, 6 of the batch-8 run cut; 4 of the new one
    saved = torch.load(run / "checkpoints" / "step-00000004.pt", weights_only=False)
    assert saved["global_batch"] == 16 and saved["steps_per_epoch"] == 2


def test_instdisc_on_other_data_is_refused_naming_the_data_set(clvr, sets, tmp_path):
    train, val = sets
    run = tmp_path / "run"
    args = ["--method", "instdisc", *TINY, *B8, "--set", "model.negatives=16", "--out", run]
    r = clvr("train", *args, "--data", train, "--set", "max_steps=1")
    assert r.code == 0, r.err
    r = clvr("train", *args, "--data", val, "--set", "max_steps=2", "--resume", "auto")
    assert r.code == 2 and "Traceback" not in r.err
    assert "data_set: 32 samples in" in r.err and "-> 8 samples in" in r.err
    # accepted, the bank still cannot hold another set: said by name, not a RuntimeError
    r = clvr("train", *args, "--data", val, "--set", "max_steps=2", "--resume", "auto", "--resume-changed", "data_set")
    assert r.code == 2 and "size mismatch for bank.bank" in r.err and "Traceback" not in r.err


def test_the_same_shards_elsewhere_resume_as_the_same_data(clvr, sets, tmp_path):
    train, _ = sets
    run = tmp_path / "run"
    r = clvr("train", "--method", "simclr", *TINY, *B8, "--data", train, "--out", run, "--set", "max_steps=1")
    assert r.code == 0, r.err
    copy = tmp_path / "scratch" / "train"
    shutil.copytree(train, copy)
    r = clvr("train", "--method", "simclr", *TINY, *B8, "--data", copy, "--out", run, "--set", "max_steps=2",
             "--resume", "auto")
    assert r.code == 0, r.err
    assert "data_set" not in r.err


def test_metrics_hold_each_step_once_after_a_resume_from_an_earlier_checkpoint(clvr, sets, tmp_path):
    train, _ = sets
    run = tmp_path / "run"
    common = ["--method", "simclr", *TINY, *B8, "--data", train, "--out", run, "--set", "log_every=1",
              "--set", "checkpoint_every=2", "--set", "max_steps=5"]
    r = clvr("train", *common)
    assert r.code == 0, r.err
    (run / "checkpoints" / "step-00000005.pt").unlink()          # killed after step 5's line, before its save
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "epoch": 1, "lo')                  # and a line cut off by the kill
    r = clvr("train", *common, "--resume", "auto")
    assert r.code == 0, r.err
    assert steps_of(run) == [1, 2, 3, 4, 5]
    assert "line(s) logged after step 4 dropped" in r.err


def test_a_longer_run_is_allowed_with_a_note_and_its_schedule_stretched(clvr, sets, tmp_path):
    from clvr.methods.schedules import lr_multiplier
    train, _ = sets
    run = tmp_path / "run"
    common = ["--method", "simclr", *TINY, *B8, "--data", train, "--out", run, "--set", "log_every=1",
              "--set", "schedule.warmup_epochs=0", "--set", "optim.lr_scaling=linear"]
    assert clvr("train", *common, "--set", "max_steps=3").code == 0
    r = clvr("train", *common, "--set", "max_steps=8", "--resume", "auto")
    assert r.code == 0, r.err
    assert "resuming with max_steps changed: 3 -> 8" in r.err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    config = torch.load(run / "checkpoints" / "step-00000008.pt", weights_only=False)["config"]
    peak = config["optim"]["lr"] * 8 / 256
    # step 4 is trained with the lr the 8-step schedule gives after 3 steps (logged after step 4's update)
    assert lines[3]["step"] == 4
    assert lines[3]["lr"] == pytest.approx(peak * lr_multiplier(4, 8, 0, "cosine", (), 0.1, 0.0), rel=1e-12)


# -- the comparison itself ------------------------------------------------------------------------

def _state(config, world_size=1, data="aaa"):
    return {"config": config, "world_size": world_size, "data_set": {"sha256": data, "samples": 10, "shards": 1}}


def test_compare_guards_meaning_and_lets_the_rest_through():
    from clvr.methods.resume import compare
    old = {"seed": 0, "epochs": 10, "data": {"batch_size": 8, "threads": 0}, "optim": {"lr": 0.1},
           "model": {"queue": 64}}
    new = {"seed": 0, "epochs": 20, "data": {"batch_size": 8, "threads": 4}, "optim": {"lr": 0.2},
           "model": {"queue": 128}}
    c = compare(_state(old), new, 2, {"sha256": "bbb", "samples": 12, "shards": 1})
    refused = "\n".join(c.refused.values())
    assert "optim.lr: 0.1 -> 0.2" in refused and "model.queue: 64 -> 128" in refused
    assert "world_size: 1 -> 2" in refused and "data_set: 10 samples" in refused
    assert c.free == {"epochs": [10, 20], "data.threads": [0, 4]}
    c = compare(_state(old), new, 2, {"sha256": "bbb"}, accept=("optim", "model.queue", "world_size", "data_set"))
    assert not c.refused and c.moves_position
    assert set(c.accepted) == {"optim.lr", "model.queue", "world_size", "data_set"}
    from clvr.methods.resume import ResumeError
    with pytest.raises(ResumeError, match="--resume-changed optim.rl: not a setting"):
        compare(_state(old), new, 1, None, accept=("optim.rl",))


def test_converted_step_keeps_the_epoch_and_the_images_seen():
    from clvr.methods.resume import converted_step
    assert converted_step(6, 4, 8, 2, 16) == 3         # epoch 1, 16 images seen -> step 1 of epoch 1
    assert converted_step(5, 4, 8, 8, 4) == 10         # epoch 1, 8 images -> 2 steps of 4
    assert converted_step(3, 4, 8, 2, 16) == 1         # 24 images: one whole batch of 16 (8 seen again)
    assert converted_step(3, 4, 8, 1, 32) == 0         # never past the epoch's end

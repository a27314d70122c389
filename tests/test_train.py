"""``clvr train`` and ``clvr export`` on one process: a run from shards to checkpoints, metrics and
an exported encoder; exact resume after SIGKILL; SIGTERM; bad configs and bad losses refused with
clear messages before (or when) they matter."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--set", "model.backbone=tiny", "--set", "data.batch_size=8", "--set", "data.recipe=simclr-cifar",
        "--set", "progress=false", "--set", "preset=paper"]
SIMCLR = ["--method", "simclr", "--set", "model.hidden=32", "--set", "model.dim=16"] + TINY
MOCO = ["--method", "moco_v2", "--set", "model.hidden=32", "--set", "model.dim=16", "--set", "model.queue=64"] + TINY


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=40) / "train"     # 32 train samples


def clvr_process(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clvr", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(p: subprocess.Popen, timeout=300) -> tuple[int, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out + err


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=False, map_location="cpu")


def test_a_run_writes_config_metrics_checkpoints_and_an_encoder(clvr, digits, tmp_path):
    run = tmp_path / "run"
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "epochs=2",
             "--set", "checkpoint_every=3", "--set", "keep=2", "--set", "log_every=2")
    assert r.code == 0, r.err
    assert "done: 8/8 steps" in r.err
    config = yaml.safe_load((run / "config.yaml").read_text())
    # SimCLR's paper settings, then the overrides
    assert config["method"] == "simclr" and config["optim"]["name"] == "lars" and config["optim"]["lr"] == 0.3
    assert config["optim"]["weight_decay"] == 1e-6 and config["schedule"]["warmup_epochs"] == 10
    assert config["model"] == {"backbone": "tiny", "hidden": 32, "dim": 16} and config["epochs"] == 2
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 4, 6, 8]
    assert all({"loss", "lr", "images_per_s", "pos_sim", "neg_sim", "pos_acc", "epoch"} <= set(x) for x in lines)
    assert [x["epoch"] for x in lines] == [0, 0, 1, 1]              # 32 samples / 8 = 4 steps per epoch
    names = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    assert names == ["step-00000006.pt", "step-00000008.pt"], "every 3 steps and at the end, the last 2 kept"
    state = weights(run / "checkpoints" / "step-00000008.pt")
    assert {"model", "optimizer", "scheduler", "rng", "config", "step", "epoch", "position", "encoder"} <= set(state)
    assert state["step"] == 8 and state["epoch"] == 2 and state["position"] == 0
    # the lr followed scale x warm-up: base 0.3 x 8 / 256, ramping over the whole (short) run
    peak = 0.3 * 8 / 256
    assert lines[0]["lr"] == pytest.approx(peak * 3 / 8, rel=1e-9)
    # and TensorBoard got the same scalars (accelerate's tracker; tensorboard is a test dependency)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in loss] == [2, 4, 6, 8]
    assert [v for _, v in loss] == pytest.approx([x["loss"] for x in lines], rel=1e-6)

    out = tmp_path / "encoder.safetensors"
    r = clvr("export", run, "--out", out)
    assert r.code == 0, r.err
    from clvr.methods.export import load_encoder
    encoder = load_encoder(out)
    prefix = state["encoder"]["prefix"]
    expected = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    got = encoder.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["architecture"]["name"] == "tiny" and side["input"]["size"] == 32 and side["method"] == "simclr"


def test_killed_with_sigkill_and_resumed_ends_with_the_same_weights(digits, tmp_path):
    common = [*MOCO, "--data", digits, "--set", "epochs=3", "--set", "checkpoint_every=1", "--set", "keep=20"]
    code, log = finish(clvr_process("train", *common, "--out", tmp_path / "whole"))
    assert code == 0, log
    kill_after = random.Random(os.getpid()).randint(2, 9)       # a random step of the 12
    p = clvr_process("train", *common, "--out", tmp_path / "cut")
    target = tmp_path / "cut" / "checkpoints" / f"step-{kill_after:08d}.pt"
    deadline = time.time() + 240
    while not target.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL, "the run was killed, not finished"
    done = sorted((tmp_path / "cut" / "checkpoints").glob("step-*.pt"))
    assert done and len(done) < 12
    code, log = finish(clvr_process("train", *common, "--out", tmp_path / "cut", "--resume", "auto"))
    assert code == 0, log
    a = weights(tmp_path / "whole" / "checkpoints" / "step-00000012.pt")
    b = weights(tmp_path / "cut" / "checkpoints" / "step-00000012.pt")
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, f"killed after step {kill_after}: {differ[:5]}"
    assert torch.equal(a["model"]["queue.keys"], b["model"]["queue.keys"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_sigterm_writes_a_checkpoint_and_exits_0(digits, tmp_path):
    run = tmp_path / "run"
    p = clvr_process("train", *SIMCLR, "--data", digits, "--out", run, "--set", "epochs=50",
                     "--set", "checkpoint_every=2")
    first = run / "checkpoints" / "step-00000002.pt"
    deadline = time.time() + 240
    while not first.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    code, log = finish(p)
    assert code == 0, log
    assert "stopped by SIGTERM" in log
    last = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    step = weights(last)["step"]
    assert 2 <= step < 200 and f"{step}/200 steps" in log


def test_bad_configs_are_refused_before_training(clvr, digits, tmp_path):
    run = tmp_path / "run"
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "optim.lrr=0.1")
    assert r.code == 2 and "unknown key 'lrr'" in r.err and "did you mean 'lr'" in r.err
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "model.temprature=0.2")
    assert r.code == 2 and "temprature" in r.err and "did you mean 'temperature'" in r.err
    r = clvr("train", "--method", "simclrr", "--data", digits, "--out", run)
    assert r.code == 2 and "did you mean 'simclr'" in r.err
    r = clvr("train", *SIMCLR, "--data", tmp_path / "nowhere", "--out", run)
    assert r.code == 2 and "nowhere" in r.err
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "grad_accum=2")
    assert r.code == 2 and "takes its negatives from the batch" in r.err
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "precision=fp32")
    assert r.code == 2 and "choose one of no, bf16, fp16" in r.err
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "data.batch_size=64")
    assert r.code == 2 and "cannot fill one batch of 64" in r.err
    assert not (run / "checkpoints").exists(), "nothing was trained"


def test_a_config_file_then_set_and_print_config(clvr, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: byol\nepochs: 5\noptim: {lr: 0.4}\nmodel: {dim: 64}\n")
    r = clvr("train", "--config", f, "--set", "optim.lr=0.5", "--data", "x", "--print-config")
    assert r.code == 0, r.err
    c = yaml.safe_load(r.out)
    assert c["method"] == "byol" and c["epochs"] == 5 and c["optim"]["lr"] == 0.5
    assert c["optim"]["name"] == "lars" and c["optim"]["weight_decay"] == 1.5e-6      # BYOL's paper settings
    assert c["model"] == {"dim": 64}
    f.write_text("optim: {lrate: 0.4}\n")
    r = clvr("train", "--config", f, "--data", "x", "--print-config")
    assert r.code == 2 and "config.optim: unknown key 'lrate'" in r.err


NAN_METHOD = '''
import torch
from clvr.methods.simclr import SimCLR


class NanAfterTwo(SimCLR):
    """SimCLR whose loss turns NaN from its third step on."""
    calls = 0

    def objective(self, batch):
        out = super().objective(batch)
        type(self).calls += 1
        if type(self).calls > 2:
            return type(out)(out.loss * float("nan"), out.logs)
        return out
'''


@pytest.fixture
def nan_method(tmp_path, monkeypatch):
    (tmp_path / "nanpkg.py").write_text(textwrap.dedent(NAN_METHOD))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "nanpkg:NanAfterTwo"
    sys.modules.pop("nanpkg", None)


def test_a_non_finite_loss_stops_naming_the_last_checkpoint_or_is_skipped(clvr, digits, tmp_path, nan_method):
    common = ["--method", nan_method, *SIMCLR[2:], "--data", digits, "--set", "epochs=1", "--set", "checkpoint_every=1",
              "--set", "log_every=1"]
    r = clvr("train", *common, "--out", tmp_path / "stop")
    assert r.code == 1
    assert "step 2: the loss is nan" in r.err and "step-00000002.pt" in r.err
    import nanpkg
    nanpkg.NanAfterTwo.calls = 0
    r = clvr("train", *common, "--out", tmp_path / "skip", "--set", "on_nonfinite=skip")
    assert r.code == 0, r.err
    assert "2 step(s) skipped" in r.err
    lines = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [x.get("skipped", 0) for x in lines] == [0, 0, 1, 1]


def test_bf16_and_channels_last(digits, tmp_path):
    # its own process: accelerate fixes the mixed precision once per process
    run = tmp_path / "run"
    code, log = finish(clvr_process("train", "--method", "byol", "--set", "model.hidden=32", "--set", "model.dim=16",
                                    "--set", "model.predictor_hidden=32", *TINY, "--data", digits, "--out", run,
                                    "--set", "epochs=1", "--set", "precision=bf16", "--set", "channels_last=true",
                                    "--set", "log_every=1"))
    assert code == 0, log
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    # the loss is computed in float32 even under bf16 autocast: not a multiple of bfloat16's step
    assert any(abs(x["loss"] * 64 - round(x["loss"] * 64)) > 1e-3 for x in lines)
    state = weights(run / "checkpoints" / "step-00000004.pt")
    conv = state["model"]["online.backbone.body.0.weight"]
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)


def test_resuming_from_an_older_checkpoint_refuses_to_mix_with_newer_ones(clvr, digits, tmp_path):
    run = tmp_path / "run"
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "epochs=1", "--set", "checkpoint_every=1",
             "--set", "keep=5")
    assert r.code == 0, r.err
    r = clvr("train", *SIMCLR, "--data", digits, "--out", run, "--set", "epochs=1", "--set", "checkpoint_every=1",
             "--resume", run / "checkpoints" / "step-00000002.pt")
    assert r.code == 1 and "holds later checkpoints (step-00000003.pt, step-00000004.pt)" in r.err
    r = clvr("train", *MOCO, "--data", digits, "--out", run, "--resume", "auto")
    assert r.code == 2 and "a checkpoint of method 'simclr', not 'moco_v2'" in r.err


def test_the_knn_monitor_scores_the_encoder_of_the_run(clvr, digits, tmp_path):
    run = tmp_path / "run"
    val = digits.parent / "val"
    r = clvr("train", *SIMCLR, "--data", digits, "--val", val, "--out", run, "--set", "epochs=3",
             "--set", "knn_every=2", "--set", "knn_k=5")
    assert r.code == 0, r.err
    knn = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "knn_top1" in x]
    assert [x["epoch"] for x in knn] == [2.0, 3.0], "every 2 epochs, and at the end"
    assert all(0 <= x["knn_top1"] <= x["knn_top5"] <= 1 for x in knn)
    # the last value is kNN of the final encoder: recompute it from the checkpoint
    from clvr.methods import train_config
    from clvr.methods.trainer import Trainer
    config = train_config.build("simclr", config_file=run / "config.yaml")
    again = Trainer(config, digits, tmp_path / "again", val=val)
    again.method.load_state_dict(weights(run / "checkpoints" / "step-00000012.pt")["model"])
    assert again.knn() == {"knn_top1": knn[-1]["knn_top1"], "knn_top5": knn[-1]["knn_top5"]}
    r = clvr("train", *SIMCLR, "--data", digits, "--val", val, "--out", tmp_path / "x", "--set", "knn_k=0")
    assert r.code == 2 and "knn_k = 0" in r.err


def test_exponents_without_a_dot_are_numbers(clvr, tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-6 as a string; a config must take it as the number it means
    f = tmp_path / "c.yaml"
    f.write_text("optim: {weight_decay: 1e-6}\n")
    r = clvr("train", "--config", f, "--set", "optim.lr=3e-1", "--data", "x", "--print-config")
    assert r.code == 0, r.err
    c = yaml.safe_load(r.out)
    assert c["optim"]["weight_decay"] == 1e-6 and c["optim"]["lr"] == 0.3
    r = clvr("train", "--set", "optim.lr=fast", "--data", "x", "--print-config")
    assert r.code == 2 and "optim.lr: expected a number, got 'fast'" in r.err


def test_an_empty_shard_folder_is_refused_before_training(clvr, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = clvr("train", *SIMCLR, "--data", empty, "--out", tmp_path / "run")
    assert r.code == 2 and str(empty) in r.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_compile_trains_and_keeps_checkpoint_names(digits, tmp_path):
    # torch.compile of the backbone (inductor, C++ on the CPU); the checkpoint's keys are those of
    # an uncompiled run, so it exports and resumes the same way
    run = tmp_path / "run"
    code, log = finish(clvr_process("train", *SIMCLR, "--data", digits, "--out", run, "--set", "max_steps=2",
                                    "--set", "compile=true"))
    assert code == 0, log
    state = weights(run / "checkpoints" / "step-00000002.pt")
    assert not [k for k in state["model"] if "_orig_mod" in k]
    assert "online.backbone.body.0.weight" in state["model"]


def test_gradient_accumulation_for_a_method_with_a_queue(clvr, digits, tmp_path):
    run = tmp_path / "run"
    r = clvr("train", *MOCO, "--data", digits, "--out", run, "--set", "epochs=2", "--set", "grad_accum=2",
             "--set", "log_every=1")
    assert r.code == 0, r.err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = [x["lr"] for x in lines]
    # 8 batches, 4 optimiser steps: the schedule moves every second batch
    assert len(lines) == 8 and lrs[0] != lrs[1] and lrs[1] == lrs[2] and lrs[3] == lrs[4]

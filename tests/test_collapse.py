"""Collapse detection during training (clvr.methods.collapse): the spread against a float64
reference, the monitor firing on a constant encoder and quiet on a working one, and the trainer
naming a collapse in metrics.jsonl, in the progress output, and stopping when asked. Also the
training settings that cannot learn, refused by name before anything is built."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clvr.methods.collapse import CollapseMonitor, feature_spread
from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--set", "model.backbone=tiny", "--set", "data.batch_size=8", "--set", "data.recipe=simclr-cifar",
        "--set", "progress=false", "--set", "tensorboard=false", "--set", "log_every=1"]
SIMCLR = ["--method", "simclr", "--set", "model.hidden=32", "--set", "model.dim=16"] + TINY


def spread_reference(h: np.ndarray) -> float:
    h = h.astype(np.float64)
    return float(h.std(axis=0).mean() / np.sqrt((h ** 2).mean()))


def test_feature_spread_is_the_formula():
    rng = np.random.default_rng(0)
    for shape, scale in (((16, 8), 1.0), ((5, 300), 1e-3), ((64, 32), 50.0)):
        h = rng.normal(size=shape) * scale + rng.normal(size=shape[1])
        assert math.isclose(feature_spread(torch.tensor(h, dtype=torch.float32)), spread_reference(h), rel_tol=1e-5)
    same = torch.ones(10, 4) * torch.tensor([1.0, -2.0, 3.0, 0.5])
    assert feature_spread(same) == 0.0
    assert feature_spread(torch.zeros(6, 3)) == 0.0
    # scale-free: multiplying the features changes nothing
    h = torch.randn(12, 7)
    assert math.isclose(feature_spread(h), feature_spread(h * 1000), rel_tol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        feature_spread(torch.ones(1, 4))


class Constant(nn.Module):
    """An encoder that ignores its input (a collapsed one), with a parameter to train."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, -1.0, 2.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1) * 1.0


def test_the_monitor_fires_on_a_constant_encoder_and_not_on_a_random_network():
    from clvr.methods.backbones import backbone
    constant = Constant().train()
    monitor = CollapseMonitor(constant)
    assert monitor.check(0) == {}                                   # nothing seen yet
    for _ in range(3):
        constant(torch.randn(8, 3, 16, 16))
    status = monitor.check(3)
    assert status == {"feature_spread": 0.0, "collapse": True, "rank_backbone": 0.0}
    assert monitor.started and monitor.since_step == 3
    constant(torch.randn(8, 3, 16, 16))
    assert monitor.check(4)["collapse"] and not monitor.started    # reported once, while it lasts
    assert "collapse" in monitor.message("byol") and "byol" in monitor.message("byol")
    monitor.close()
    constant(torch.randn(8, 3, 16, 16))
    assert monitor.check(5) == {}                                  # the hook is removed

    torch.manual_seed(0)
    net = backbone("tiny", stem="cifar").train()
    monitor = CollapseMonitor(net)
    net(torch.randn(16, 3, 16, 16))
    status = monitor.check(1)
    assert "collapse" not in status and status["feature_spread"] > 10 * monitor.threshold
    net.eval()                                                     # eval passes (the kNN monitor) are not counted
    net(torch.randn(16, 3, 16, 16))
    assert monitor.check(2) == {}
    with pytest.raises(ValueError, match="negative"):
        CollapseMonitor(net, threshold=-1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("collapse") / "d", limit=40) / "train"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_working_run_logs_its_spread_and_no_collapse(clvr, digits, tmp_path):
    r = clvr("train", *SIMCLR, "--data", digits, "--out", tmp_path / "run", "--set", "epochs=2")
    assert r.code == 0, r.err
    lines = records(tmp_path / "run")
    spreads = [x["feature_spread"] for x in lines if "loss" in x]
    assert len(spreads) == 8 and min(spreads) > 0.01
    # (the data's path, which the plan names, holds the word too)
    assert not any(x.get("collapse") or x.get("dimensional_collapse") or x.get("event", "view_check") != "view_check"
                   for x in lines)
    assert "collapse" not in r.err.replace(str(digits), "")


def test_a_collapse_is_named_in_metrics_and_output_and_can_stop_the_run(clvr, digits, tmp_path):
    from clvr.methods.plots import read_metrics
    # a threshold no features reach: the plumbing of a collapse, from detector to report
    r = clvr("train", *SIMCLR, "--data", digits, "--out", tmp_path / "warn", "--set", "epochs=1",
             "--set", "collapse_threshold=100")
    assert r.code == 0, r.err
    lines = records(tmp_path / "warn")
    events = [x for x in lines if x.get("event") == "collapse"]
    assert len(events) == 1 and events[0]["step"] == 1 and "representation collapse" in events[0]["message"]
    assert all(x["collapse"] is True for x in lines if "loss" in x)
    assert "representation collapse" in r.err and "simclr" in r.err
    kept = read_metrics(tmp_path / "warn" / "metrics.jsonl")        # the event does not hide the step's record
    assert [x["step"] for x in kept if "loss" in x] == [1, 2, 3, 4]

    r = clvr("train", *SIMCLR, "--data", digits, "--out", tmp_path / "stop", "--set", "epochs=1",
             "--set", "collapse_threshold=100", "--set", "on_collapse=stop")
    assert r.code != 0 and "representation collapse" in r.err and "on_collapse = stop" in r.err
    r = clvr("train", *SIMCLR, "--data", digits, "--out", tmp_path / "bad", "--set", "collapse_threshold=-1")
    assert r.code != 0 and "collapse_threshold" in r.err


@pytest.mark.parametrize("args, key", [
    (["--set", "model.temperature=0"], "temperature"),
    (["--set", "data.batch_size=1"], "data.batch_size"),
])
def test_simclr_settings_that_cannot_learn_are_refused_by_name(clvr, digits, tmp_path, args, key):
    r = clvr("train", *SIMCLR, *args, "--data", digits, "--out", tmp_path / "run")
    assert r.code != 0 and key in r.err, r.err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_queue_shorter_than_a_batch_is_refused_by_name(clvr, digits, tmp_path):
    moco = ["--method", "moco_v2", "--set", "model.hidden=32", "--set", "model.dim=16"] + TINY
    r = clvr("train", *moco, "--set", "model.queue=4", "--data", digits, "--out", tmp_path / "a")
    assert r.code != 0 and "model.queue = 4" in r.err and "smaller" in r.err and "data.batch_size 8" in r.err
    r = clvr("train", *moco, "--set", "model.queue=20", "--data", digits, "--out", tmp_path / "b")
    assert r.code != 0 and "model.queue = 20" in r.err and "multiple of" in r.err and "16" in r.err
    r = clvr("train", *moco, "--set", "model.queue=16", "--set", "model.symmetric=true", "--set", "epochs=1", "--data", digits,
             "--out", tmp_path / "c")
    assert r.code == 0, r.err              # symmetric: 2 x 8 keys a step, and 16 holds them


# ------------------------------------------------------------------ dimensional collapse (issue 22)

def rank_reference(h: np.ndarray) -> float:
    """exp of the entropy of the normalised singular values of the centred batch, in float64."""
    h = h.astype(np.float64)
    s = np.linalg.svd(h - h.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_effective_rank_is_the_formula():
    from clvr.methods.collapse import effective_rank
    rng = np.random.default_rng(1)
    for shape in ((32, 8), (16, 40), (128, 128)):
        h = rng.normal(size=shape) * rng.uniform(0.1, 3, size=shape[1])
        assert math.isclose(effective_rank(torch.tensor(h, dtype=torch.float32)), rank_reference(h), rel_tol=1e-4)
    # features on 3 orthogonal directions with equal energy: rank 3; on one line: 1
    basis = np.linalg.qr(rng.normal(size=(16, 3)))[0].T                   # (3, 16)
    codes = np.kron(np.eye(3), np.ones((4, 1))) * 5.0                     # 12 rows, 4 per direction
    codes -= codes.mean(axis=0)
    h = codes @ basis + 7.0                                               # an offset changes nothing
    assert math.isclose(effective_rank(torch.tensor(h)), rank_reference(h), rel_tol=1e-9)
    line = np.outer(rng.normal(size=20), rng.normal(size=6))
    assert math.isclose(effective_rank(torch.tensor(line)), 1.0, rel_tol=1e-6)
    assert effective_rank(torch.ones(5, 4) * 3) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        effective_rank(torch.ones(1, 4))


class LowRank(nn.Module):
    """An encoder whose 32 features vary along 2 directions only: spread but no dimensions."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("mix", torch.randn(2, 32, generator=g))

    def forward(self, x):
        return x.flatten(1)[:, :2] @ self.mix + 0.5


def test_the_monitor_names_dimensional_collapse_that_the_spread_does_not_see():
    from clvr.methods.backbones import backbone
    from clvr.methods.heads import mlp_head
    enc, head = LowRank().train(), mlp_head(32, 16, 8).train()
    monitor = CollapseMonitor(enc, head=head)
    head(enc(torch.randn(64, 3, 4, 4)))
    status = monitor.check(10)
    assert status["feature_spread"] > 0.1 and "collapse" not in status          # the spread calls it healthy
    assert status["rank_backbone"] < 3 and status["dimensional_collapse"] == ["backbone"]
    assert monitor.dimensional_started and monitor.dimensional_since == 10
    from clvr.methods.registry import get_method
    text = monitor.dimensional_message("byol", get_method("byol").collapse_hint)
    assert "dimensional collapse since step 10" in text and "backbone features' effective rank" in text
    assert "methods without negatives" in text and "model.base_momentum" in text
    # a contrastive method's hint is not BYOL's
    simclr = monitor.dimensional_message("simclr", get_method("simclr").collapse_hint)
    assert "model.temperature" in simclr and "without negatives" not in simclr
    assert "of at most 32" in text
    head(enc(torch.randn(64, 3, 4, 4)))
    assert monitor.check(11)["dimensional_collapse"] == ["backbone"] and not monitor.dimensional_started
    # rank_fraction 0: the ranks are reported, nothing is flagged
    quiet = CollapseMonitor(enc, rank_fraction=0.0)
    enc(torch.randn(64, 3, 4, 4))
    status = quiet.check(1)
    assert "dimensional_collapse" not in status and status["rank_backbone"] < 3
    # a random ResNet on noise spreads over many dimensions: not flagged
    torch.manual_seed(0)
    net = backbone("tiny", stem="cifar").train()
    ok = CollapseMonitor(net)
    net(torch.randn(64, 3, 16, 16))
    status = ok.check(1)
    assert "dimensional_collapse" not in status and status["rank_backbone"] > 0.25 * min(64, net.num_features)


def test_the_rank_is_measured_on_the_latest_256_rows_across_forward_passes():
    """BYOL embeds its two views in two passes of B rows; the rank is measured on as many rows as
    SimCLR's one pass of 2B, so that the methods' ranks compare."""
    from clvr.methods.collapse import RANK_ROWS
    enc = nn.Linear(12, 300).train()
    monitor = CollapseMonitor(enc)
    for _ in range(2):
        enc(torch.randn(64, 12))
    monitor.check(1)
    assert monitor.ranks["backbone"][1] == 128            # both passes: min(128 rows, 300)
    for _ in range(6):
        enc(torch.randn(64, 12))
    monitor.check(2)
    assert monitor.ranks["backbone"][1] == RANK_ROWS == 256
    assert 0 < monitor.ranks["backbone"][0] <= 12 + 1e-6   # a linear map of 12 inputs has at most 12 dimensions

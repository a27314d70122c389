"""The cross-process contracts, checked in 2 CPU processes started by ``accelerate launch`` (the
process group comes from the environment, as in a real run): tests/launched_checks.py measures,
this file compares."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("launched")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).with_name("launched_checks.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(script), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]


def test_launched_as_two_gloo_processes(ranks):
    assert [(r["rank"], r["world"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]


def test_nt_xent_gathered_over_two_processes_equals_one_batch(ranks):
    for r in ranks:
        x = r["nt_xent"]
        assert x["mean_loss"] == pytest.approx(x["whole_loss"], abs=1e-12)
        assert x["grad_err"] < 1e-12


def test_a_ddp_wrapped_method_gets_the_gradients_of_the_whole_batch(ranks):
    for r in ranks:
        x = r["simclr_ddp"]
        assert x["params"] > 5 and x["grad_err"] < 1e-10
        assert x["loss"] != pytest.approx(x["whole_loss"], abs=1e-6), "each process's own loss differs"


def test_queue_and_bank_hold_every_process_in_rank_order(ranks):
    expected_queue = torch.tensor([[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 2 + [[0.0, 0.0]] * 4)
    for r in ranks:
        assert torch.equal(r["queue"][:4], expected_queue[:4])
        bank = r["bank"]
        s = 2 ** -0.5
        for row, v in ((0, 1), (5, 1), (1, 2), (6, 2)):
            assert torch.allclose(bank[row], torch.tensor([s, s]), atol=1e-6), (row, v)
    assert torch.equal(ranks[0]["bank"], ranks[1]["bank"])


def test_the_shuffle_crosses_processes_and_comes_back(ranks):
    assert torch.equal(ranks[0]["order"], ranks[1]["order"])
    got = torch.cat([r["shuffled"] for r in ranks]).flatten()
    assert sorted(got.tolist()) == list(range(8))
    assert any(int(v) >= 4 for v in ranks[0]["shuffled"].flatten()), "rank 0 computes keys of rank 1's rows"
    for i, r in enumerate(ranks):
        expected = torch.arange(i * 4, (i + 1) * 4, dtype=torch.float64)[:, None] * 10
        assert torch.equal(r["unshuffled"], expected)

"""``clvr train`` on 2 CPU processes, started by ``accelerate launch`` as a user would start it:
every rank runs the same number of steps, the sample indices of the ranks are disjoint and cover
the epoch, the queue and the checkpoint hold every rank's state, and a killed 2-process run
resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RECORDER = '''
import json, os
import torch.distributed as dist
from clvr.methods.moco import MoCoV2


class RecordingMoCo(MoCoV2):
    """MoCo v2 that writes each batch's sample indices, per rank, to $RECORD_DIR."""

    def objective(self, batch):
        rank = dist.get_rank() if dist.is_initialized() else 0
        with open(os.path.join(os.environ["RECORD_DIR"], f"rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": batch.epoch, "step": batch.step, "index": batch.index.tolist()}) + "\\n")
        return super().objective(batch)
'''


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=40) / "train"     # 32 train samples


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, env, processes=2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "clvr", "train", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


@pytest.fixture
def recorder(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "recording.py").write_text(textwrap.dedent(RECORDER))
    record = tmp_path / "record"
    record.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")]),
               RECORD_DIR=str(record), OMP_NUM_THREADS="1")
    return env, record


COMMON = ["--method", "recording:RecordingMoCo", "--set", "model.backbone=tiny", "--set", "model.hidden=32",
          "--set", "model.dim=16", "--set", "model.queue=64", "--set", "data.batch_size=8",
          "--set", "data.recipe=simclr-cifar", "--set", "progress=false", "--set", "keep=20",
          "--set", "preset=paper"]


def test_two_processes_split_every_epoch_and_share_the_state(digits, tmp_path, recorder):
    env, record = recorder
    p = launch([*COMMON, "--data", digits, "--out", tmp_path / "run", "--set", "epochs=3"], env)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "done: 6/6 steps" in err, "32 samples / (2 ranks x 8) = 2 steps per epoch, 3 epochs"
    ranks = [[json.loads(x) for x in (record / f"rank{r}.jsonl").read_text().splitlines()] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 6, "every rank runs the same number of steps"
    for epoch in range(3):
        seen = [i for r in ranks for b in r if b["epoch"] == epoch for i in b["index"]]
        assert sorted(seen) == list(range(32)), f"epoch {epoch}: every sample once, across the ranks"
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000006.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"]), "each rank's own RNG is kept"
    # the queue holds the keys of the last 64 / 16 = 4 global batches, both ranks in rank order:
    # after 6 steps of 16 keys its pointer wrapped to (6 * 16) % 64
    assert int(state["model"]["queue.pointer"]) == (6 * 16) % 64


def test_a_killed_two_process_run_resumes_to_the_same_weights(digits, tmp_path, recorder):
    env, _ = recorder
    common = [*COMMON, "--data", digits, "--set", "epochs=3", "--set", "checkpoint_every=1"]
    p = launch([*common, "--out", tmp_path / "whole"], env)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    p = launch([*common, "--out", tmp_path / "cut"], env)
    target = tmp_path / "cut" / "checkpoints" / "step-00000003.pt"
    deadline = time.time() + 300
    while not target.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # the launcher and both workers, at once (torch's agent starts each worker in a session of
    # its own, so killing the launcher's group alone leaves them running)
    workers = psutil.Process(p.pid).children(recursive=True)
    os.killpg(p.pid, signal.SIGKILL)
    for w in workers:
        try:
            w.kill()
        except psutil.NoSuchProcess:
            pass
    p.wait(timeout=60)
    psutil.wait_procs(workers, timeout=60)
    assert len(list((tmp_path / "cut" / "checkpoints").glob("step-*.pt"))) < 6
    p = launch([*common, "--out", tmp_path / "cut", "--resume", "auto"], env)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "step-00000006.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "step-00000006.pt", weights_only=False)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

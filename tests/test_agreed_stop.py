"""Issue 21, parts 1 and 2: stopping is agreed across processes. A SIGTERM, SIGINT or SIGUSR1 to
one rank only stops every rank at the end of the same step, with one checkpoint, and exit 0 (it
used to hang: one rank in the checkpoint's collective, the other in the next step's); Ctrl-C on
one process checkpoints instead of a traceback; resuming gives the weights of an uninterrupted
run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import make_demo
from test_train_distributed import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

COMMON = ["--method", "simclr", "--set", "model.backbone=tiny", "--set", "model.hidden=32", "--set", "model.dim=16",
          "--set", "data.batch_size=8", "--set", "data.recipe=simclr-cifar", "--set", "progress=false",
          "--set", "keep=100", "--set", "preset=paper", "--set", "checkpoint_every=1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=40) / "train"     # 32 train samples


def launch(args, processes=2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "clvr", "train", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)


def wait_for(path: Path, p: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.05)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    deadline = time.time() + 60
    while time.time() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "clvr" in " ".join(child.cmdline()):
                    return child.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker of rank {rank}")


def steps_of(run: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.pt"))


@pytest.mark.parametrize("sig,rank", [(signal.SIGTERM, 1), (signal.SIGUSR1, 0), (signal.SIGINT, 1)])
def test_a_signal_to_one_rank_stops_both_at_one_step_and_resume_is_exact(digits, tmp_path, sig, rank):
    common = [*COMMON, "--data", digits, "--set", "epochs=8"]
    p = launch([*common, "--out", tmp_path / "whole"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    p = launch([*common, "--out", tmp_path / "cut"])
    wait_for(tmp_path / "cut" / "checkpoints" / "step-00000003.pt", p)
    os.kill(rank_pid(p, rank), sig)                         # one rank only, as one node of a pre-empted job
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    stopped = steps_of(tmp_path / "cut")[-1]
    assert 3 <= stopped < 16 and "stopped by " in err and f"{stopped}/16 steps" in err
    assert f"{sig.name} received" in err or "a stop asked on another process received" in err
    # resumed, it ends where the uninterrupted run ended, with the same weights
    p = launch([*common, "--out", tmp_path / "cut", "--resume", "auto"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    name = "step-00000016.pt"
    a = torch.load(tmp_path / "whole" / "checkpoints" / name, weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / name, weights_only=False)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_ctrl_c_checkpoints_and_exits_0(digits, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "clvr", "train", *COMMON, "--data", str(digits), "--out", str(run),
                          "--set", "epochs=200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run / "checkpoints" / "step-00000002.pt", p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "stopped by SIGINT" in err and "SIGINT received" in err
    step = steps_of(run)[-1]
    assert f"{step}/800 steps" in err


def test_a_second_ctrl_c_aborts_and_the_command_exits_130(clvr, digits, tmp_path, monkeypatch):
    from clvr.methods import train_config as cfg
    from clvr.methods.trainer import Trainer
    config, settings = cfg.build_for_data("simclr", None, [s for s in COMMON[2:] if s != "--set"], digits)
    trainer = Trainer(config, digits, tmp_path / "run", settings=settings)
    trainer._on_signal(signal.SIGINT, None)                 # the first asks for a checkpoint ...
    assert trainer._signalled == "SIGINT" and not trainer._stop
    trainer._agree_stop()
    assert trainer._stop
    with pytest.raises(KeyboardInterrupt):                  # ... the second aborts at once
        trainer._on_signal(signal.SIGINT, None)
    trainer.release()

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "run", interrupted)
    r = clvr("train", *COMMON, "--data", digits, "--out", tmp_path / "cli", "--set", "max_steps=2")
    assert r.code == 130 and "interrupted twice: stopped at once" in r.err and "Traceback" not in r.err


def test_workers_of_a_killed_launcher_stop_within_seconds_with_a_checkpoint(digits, tmp_path):
    """kill -9 of the launcher's group: torch's agent starts each worker in a session of its own,
    so the workers used to train on to the end, writing into a run a new --resume would share."""
    run = tmp_path / "run"
    p = launch([*COMMON, "--data", digits, "--set", "epochs=200", "--out", run])
    wait_for(run / "checkpoints" / "step-00000003.pt", p)
    workers = [psutil.Process(rank_pid(p, rank)) for rank in (0, 1)]
    os.killpg(p.pid, signal.SIGKILL)
    killed = time.time()
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert alive == [], f"workers still running {time.time() - killed:.0f} s after their launcher was killed"
    _, err = p.communicate(timeout=30)
    assert "stopped by " in err and "Traceback" not in err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "stopped" and status["step"] < 800 and status["step"] == steps_of(run)[-1]
    assert not (run / ".clvr-train.lock").exists()
    p = launch([*COMMON, "--data", digits, "--set", "epochs=200", "--set", f"max_steps={status['step'] + 2}",
                "--out", run, "--resume", "auto"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    assert steps_of(run)[-1] == status["step"] + 2


def test_a_signalled_launcher_passes_the_stop_on_and_status_json_says_so(digits, tmp_path):
    """Slurm's scancel signals the launcher too: torch's agent sends SIGTERM on to the workers,
    which stop with a checkpoint; the launcher itself exits 143 (its own termination), so job
    scripts read OUT/status.json."""
    run = tmp_path / "run"
    p = launch([*COMMON, "--data", digits, "--set", "epochs=200", "--out", run])
    wait_for(run / "checkpoints" / "step-00000003.pt", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "stopped" and status["by"] == "SIGTERM"
    assert status["last_checkpoint"] == str(run / "checkpoints" / f"step-{status['step']:08d}.pt")
    assert status["step"] == steps_of(run)[-1] < 800

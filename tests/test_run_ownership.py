"""Issue 21, part 3: a run directory has one owner. A second ``clvr train`` into the ``--out`` of
a running one is refused with a message naming the first (pid and host) before it builds or
writes anything; a lock file left by a run that died is taken over with a line saying so; a
finished run gives the directory back (resuming into it works)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--method", "simclr", "--set", "model.hidden=32", "--set", "model.dim=16", "--set", "model.backbone=tiny",
        "--set", "data.batch_size=8", "--set", "data.recipe=simclr-cifar", "--set", "progress=false",
        "--set", "preset=paper"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=40) / "train"


def test_a_second_run_into_a_running_runs_directory_is_refused_by_name(clvr, digits, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "clvr", "train", *TINY, "--data", str(digits), "--out", str(run),
                              "--set", "epochs=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = run / ".clvr-train.lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "metrics.jsonl").exists():
            assert first.poll() is None, first.communicate()
            time.sleep(0.2)
        holder = json.loads(lock.read_text())
        assert holder == {"host": socket.gethostname(), "pid": first.pid}
        config_before = (run / "config.yaml").read_text()
        r = clvr("train", *TINY, "--data", digits, "--out", run, "--set", "max_steps=2", "--set", "seed=7")
        assert r.code == 2
        assert f"{run}: another 'clvr train' is writing here (pid {first.pid} on host {socket.gethostname()})" in r.err
        assert "choose another --out" in r.err
        assert (run / "config.yaml").read_text() == config_before          # the second wrote nothing
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not (run / ".clvr-train.lock").exists()                         # given back at the end
    r = clvr("train", *TINY, "--data", digits, "--out", run, "--set", "epochs=100000", "--set", "max_steps=4",
             "--resume", "auto")
    assert r.code == 0, r.err                                               # the directory is free again


def test_a_lock_left_by_a_run_that_died_is_taken_over_with_a_line(clvr, digits, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".clvr-train.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    r = clvr("train", *TINY, "--data", digits, "--out", run, "--set", "max_steps=2")
    assert r.code == 0, r.err
    assert f"taking over the run directory from pid {dead.pid} on host {socket.gethostname()}" in r.err


def test_a_run_set_up_but_never_run_gives_the_directory_back(digits, tmp_path):
    from clvr.methods import train_config as cfg
    from clvr.methods.trainer import Trainer
    config, settings = cfg.build_for_data("simclr", None, [s for s in TINY[2:] if s != "--set"], digits)
    trainer = Trainer(config, digits, tmp_path / "run", settings=settings)
    assert (tmp_path / "run" / ".clvr-train.lock").exists()
    trainer.release()
    again = Trainer(config, digits, tmp_path / "run", settings=settings)     # not refused
    again.release()

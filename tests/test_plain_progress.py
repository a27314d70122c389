"""Issue 21, part 7: when stderr is not a terminal (Slurm, nohup, CI, ``make demo > log``),
progress is a plain line every ``CLVR_PROGRESS_SECONDS`` (30 by default) instead of bar redraws;
the terminal bar stays as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--method", "simclr", "--set", "model.hidden=32", "--set", "model.dim=16", "--set", "model.backbone=tiny",
        "--set", "data.batch_size=8", "--set", "data.recipe=simclr-cifar", "--set", "preset=paper"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=40) / "train"


def _train(digits, out, seconds: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CLVR_PROGRESS_SECONDS=seconds)
    return subprocess.run([sys.executable, "-m", "clvr", "train", *TINY, "--data", str(digits), "--out", str(out),
                           "--set", "max_steps=12"], capture_output=True, text=True, env=env)


def test_a_log_file_gets_plain_lines_not_bar_redraws(digits, tmp_path):
    r = _train(digits, tmp_path / "run", "30")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr                                     # no redraws
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("simclr: ")]
    assert len(lines) == 1 and lines[0].startswith("simclr: 12/12 step (100%)") and lines[0].endswith("(done)")
    assert "loss=" in lines[0] and "step/s" in lines[0]


def test_plain_lines_come_every_interval_with_step_loss_rate_and_time_left(digits, tmp_path):
    r = _train(digits, tmp_path / "run", "0")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("simclr: ")]
    assert len(lines) == 13                                          # one per step, and the last
    assert lines[5].startswith("simclr: 6/12 step (50%)") and " left" in lines[5] and "loss=" in lines[5]


def test_the_plain_bar_keeps_tqdms_interface_and_counts():
    import io
    from clvr.shards.progress import PlainBar
    out = io.StringIO()
    bar = PlainBar(10, "x", "step", initial=2, interval=0, file=out)
    bar.update(3)
    bar.set_postfix(loss="1.5", lr=0.1)
    bar.write("a note")
    bar.set_postfix_str("text")
    bar.update(5)
    bar.close()
    bar.close()                                                      # once only
    got = out.getvalue().splitlines()
    assert got[0].startswith("x: 5/10 step (50%)") and got[1] == "a note"
    assert got[2].startswith("x: 10/10 step (100%)") and got[2].endswith("text")
    assert got[3].startswith("x: 10/10 step (100%)") and got[3].endswith("(done)") and len(got) == 4
    stopped = io.StringIO()
    bar = PlainBar(10, "x", "step", interval=60, file=stopped)
    bar.update(4)
    bar.close()                                                      # a run stopped by a signal
    assert stopped.getvalue().splitlines() == [stopped.getvalue().splitlines()[0]]
    assert stopped.getvalue().startswith("x: 4/10 step (40%)") and stopped.getvalue().rstrip().endswith("(stopped)")

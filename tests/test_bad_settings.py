"""Issue 21, part 5: every bad setting and every unwritable output of ``clvr train`` is one line
naming the key or the path, before the pipeline is built; a full disk is "disk full while writing
PATH; the last good checkpoint is ...", and the checkpoints written before stay whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--method", "simclr", "--set", "model.backbone=tiny", "--set", "model.hidden=32", "--set", "model.dim=16",
        "--set", "data.batch_size=8", "--set", "data.recipe=simclr-cifar", "--set", "progress=false",
        "--set", "preset=paper"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=40) / "train"


def one_line_error(r, *names):
    lines = r.err.strip().splitlines()
    assert r.code == 2, r
    assert len(lines) == 1 and lines[0].startswith("clvr train: "), r.err
    assert "Traceback" not in r.err and "building the DALI pipeline" not in r.err
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("setting,named", [
    ("optim.lr=nan", "optim.lr = nan must be a finite number"),
    ("optim.lr=.inf", "optim.lr = inf must be a finite number"),
    ("schedule.warmup_epochs=-1", "schedule.warmup_epochs = -1 must be in [0, inf)"),
    ("optim.momentum=-0.5", "optim.momentum = -0.5 must be in [0, 1)"),
    ("optim.momentum=1.5", "optim.momentum = 1.5 must be in [0, 1)"),
    ("optim.weight_decay=-1", "optim.weight_decay = -1 must be in [0, inf)"),
    ("optim.eta=0", "optim.eta = 0 must be in (0, inf)"),
    ("optim.betas=[2,3]", "optim.betas = [2.0, 3.0]: each must be in [0, 1)"),
    ("seed=-1", "seed = -1 must be an integer in [0, 2^32)"),
    ("knn_temperature=.nan", "knn_temperature = nan must be a finite number"),
    ("data.shuffle_buffer=-5", "data.shuffle_buffer = -5 must not be negative"),
    ("model.dim=0", "dim = 0 must be at least 1"),
    ("model.temperature=.inf", "temperature = inf must be a finite number"),
])
def test_a_bad_setting_is_one_line_naming_it(clvr, digits, tmp_path, setting, named):
    extra = ["--set", "optim.name=adamw"] if "betas" in setting else []
    r = clvr("train", *TINY, *extra, "--set", setting, "--data", digits, "--out", tmp_path / "run")
    one_line_error(r, named)
    assert not (tmp_path / "run").exists()


def test_an_out_that_is_a_file_under_a_file_or_empty_is_one_line(clvr, digits, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    r = clvr("train", *TINY, "--data", digits, "--out", a_file)
    one_line_error(r, f"--out {a_file} is a file, not a directory")
    r = clvr("train", *TINY, "--data", digits, "--out", a_file / "run")
    one_line_error(r, f"{a_file} is a file, so no folder can be made under it")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = clvr("train", *TINY, "--data", digits, "--out", "")
    finally:
        os.chdir(here)
    one_line_error(r, "--out is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]     # nothing written into the cwd


@pytest.mark.parametrize("case", ["read-only folder", "read-only run directory", "folder it cannot enter"])
def test_an_unwritable_out_is_one_line(digits, tmp_path, case):
    """As a user without write permission. Root's capabilities override permissions, so as root
    the command runs without them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): the folders' modes
    then bind it as they bind their owner, and it still reads the repository, whoever may."""
    ro = tmp_path / "ro"
    (ro / "run").mkdir(parents=True)
    out = ro / "run" if case == "read-only run directory" else ro / "run" / "new"
    command = [sys.executable, "-m", "clvr", "train", *TINY, "--data", str(digits), "--out", str(out)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root: setpriv (util-linux) is needed to drop root's file capabilities"
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    os.chmod(ro / "run", 0o555 if case != "folder it cannot enter" else 0o000)
    try:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    finally:
        os.chmod(ro / "run", 0o755)
    expected = (f"clvr train: --out {out} is not writable (Permission denied): choose a folder you can write to"
                if case == "read-only run directory" else
                f"clvr train: --out {out}: cannot create the run directory (Permission denied)")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [expected]
    assert sorted(p.name for p in (ro / "run").iterdir()) == []


def test_a_full_disk_while_checkpointing_names_the_file_and_the_last_good_checkpoint(clvr, digits, tmp_path):
    run = tmp_path / "run"
    r = clvr("train", *TINY, "--data", digits, "--out", run, "--set", "max_steps=2")
    assert r.code == 0, r.err
    # step 4's checkpoint is written to a temporary file first: make that file the kernel's /dev/full
    tmp = run / "checkpoints" / f"step-00000004.pt.{os.getpid()}.tmp"
    tmp.symlink_to("/dev/full")
    r = clvr("train", *TINY, "--data", digits, "--out", run, "--set", "max_steps=4", "--resume", "auto")
    assert r.code == 1, r.err
    last = r.err.strip().splitlines()[-1]
    assert last == (f"clvr train: disk full while writing {run / 'checkpoints' / 'step-00000004.pt'}; the last "
                    f"good checkpoint is {run / 'checkpoints' / 'step-00000002.pt'}. Free some space (or lower "
                    "keep=) and resume with --resume auto")
    assert "Traceback" not in r.err and "unexpected pos" not in r.err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002.pt"]
    assert torch.load(run / "checkpoints" / "step-00000002.pt", weights_only=False)["step"] == 2


def test_a_full_disk_while_logging_names_the_file(clvr, digits, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    r = clvr("train", *TINY, "--data", digits, "--out", run, "--set", "max_steps=2", "--set", "log_every=1")
    assert r.code == 1, r.err
    assert r.err.strip().splitlines()[-1] == (
        f"clvr train: disk full while writing {run / 'metrics.jsonl'}; the last good checkpoint is none (nothing "
        "was saved yet). Free some space (or lower keep=) and resume with --resume auto")
    assert not (run / ".clvr-train.lock").exists()          # the run let go of its directory
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("disk full while writing")

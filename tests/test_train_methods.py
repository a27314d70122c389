"""Every method runs from ``clvr train`` with its paper defaults (tiny networks, two steps), on the
demo shards its views need, and writes a checkpoint that ``clvr export`` turns into an encoder."""

from __future__ import annotations

import json
import pytest
import torch
import yaml

from clvr.methods import available, get_method
from conftest import make_demo
from test_methods import CASES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demos")
    return {name: make_demo(root / name, name, limit=40) / "train"
            for name in ("digits", "digits-objects", "digits-video", "digits-captions")}


def sets(config: dict, prefix: str) -> list[str]:
    out = []
    for k, v in config.items():
        out += ["--set", f"{prefix}.{k}={json.dumps(v) if isinstance(v, dict) else v}"]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_method_trains_from_the_command_and_exports(name, demos, clvr, tmp_path):
    demo, config, view_options = CASES[name]
    cls = get_method(name)
    run = tmp_path / "run"
    args = ["train", "--method", name, "--data", demos[demo], "--out", run, *sets(config, "model"),
            "--set", "data.batch_size=4", "--set", "max_steps=2", "--set", "progress=false", "--set", "log_every=1",
            "--set", "preset=paper"]
    if view_options:
        args += ["--set", f"data.view_options={json.dumps(view_options)}"]
    if cls.recipe:
        args += ["--set", f"data.recipe={cls.recipe}"]
    r = clvr(*args)
    assert r.code == 0, r.err
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in cls.training.get("optim", {}).items():      # the paper's settings were used
        assert resolved["optim"][key] == value
    out = tmp_path / "encoder.safetensors"
    r = clvr("export", run, "--out", out)
    assert r.code == 0, r.err
    from clvr.methods.export import load_encoder
    encoder = load_encoder(out)
    assert encoder.num_features > 0


def test_every_registered_method_is_covered():
    assert sorted(CASES) == available()

"""bench/defaults_check.py: each method trained and scored with the README's commands, compared
with bench-quality's mean (issue 22: within 3 points); here with a stand-in for the clvr command
line (the real runs take an hour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_bench

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def check():
    return load_bench("defaults_check")


def knn_results(top1: float) -> dict:
    return {"protocols": {"knn": {"k20": {"learned": {"top1": top1}}, "k200": {"learned": {"top1": 0.0}}}}}


def test_defaults_are_compared_with_the_benchmarks_mean(check, tmp_path, monkeypatch):
    quality = tmp_path / "quality.json"
    quality.write_text(json.dumps({"rows": {"simclr": [{"kNN 100%": 93.0}, {"kNN 100%": 95.0}],
                                            "byol": [{"kNN 100%": 88.0}]}}))
    scored = {"simclr": 0.925, "byol": 0.80}
    calls = []

    def fake_clvr(*args):
        calls.append(args)
        if args[0] == "shard":
            Path(args[3]).mkdir(parents=True)
            (Path(args[3]) / "manifest.json").write_text("{}")
        elif args[0] == "train":
            run = Path(args[args.index("--out") + 1])
            run.mkdir(parents=True)
            (run / "status.json").write_text(json.dumps({"status": "done"}))
        elif args[0] == "eval":
            out = Path(args[args.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "results.json").write_text(json.dumps(knn_results(scored[Path(args[2]).name.split("-")[0]])))

    monkeypatch.setattr(check, "clvr", fake_clvr)
    out = tmp_path / "out"
    code = check.main(["--seed", "7", "--methods", "simclr", "byol", "--out", str(out), "--quality", str(quality)])
    report = (out / "table.md").read_text()
    assert code == 1                                           # byol is 8 points below its benchmark
    assert "PASS  simclr: kNN 92.5 with the defaults, benchmark 94.0: -1.5" in report
    assert "FAIL  byol: kNN 80.0 with the defaults, benchmark 88.0: -8.0" in report
    train = [c for c in calls if c[0] == "train"]
    assert train[0] == ("train", "--method", "simclr", "--data", str(out / "data" / "train"),
                        "--out", str(out / "runs" / "simclr-seed7"), "--set", "seed=7")   # no other setting
    # a finished check is kept: run again, nothing is trained or scored
    calls.clear()
    assert check.main(["--seed", "7", "--methods", "simclr", "--out", str(out), "--quality", str(quality)]) == 0
    assert calls == []


def test_the_knn_is_read_at_k_20(check, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(knn_results(0.5)))
    assert check.knn_top1(path) == 50.0
    assert check.verdict("pirl", 87.0, None).startswith("NONE")
    assert check.verdict("pirl", 87.0, 90.0).startswith("PASS") and check.verdict("pirl", 86.9, 90.0).startswith("FAIL")

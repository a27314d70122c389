"""Evaluation and training on WebDataset sets from the wild: samples without a label (-1) are
left out of every protocol and counted; classes are compared by id (a class only the scored set
has, or ids named differently, is an error naming them; a class only the trained-on set has is a
note); and samples skipped under on_error = skip are reported, never silent."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--method", "simclr", "--set", "model.backbone=tiny", "--set", "data.batch_size=8", "--set", "progress=false",
        "--set", "tensorboard=false"]
EVAL = ["--no-baselines", "--no-plots", "--set", "progress=false", "--set", "batch_size=16"]


def _index(path: Path) -> Path:
    from clvr.cli import main
    assert main(["shard", "index", str(path), "--no-progress"]) == 0
    return path


def _labelled(out: Path, labels: list, prefix: str) -> Path:
    from clvr.shards.wild import write
    write(out, [{"key": f"{prefix}{i:04d}", "label": y} for i, y in enumerate(labels)])
    return _index(out)


def _png(i: int, broken: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), (i * 37 % 255, i * 71 % 255, 90), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    if broken:              # the header (and so the index's size probe) stays readable, the pixels do not
        at = data.index(b"IDAT") + 4
        data[at:at + 20] = b"\0" * 20
    return bytes(data)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    from clvr.shards.wild import write_layout
    root = tmp_path_factory.mktemp("wild")
    unl = root / "unlabelled"
    write_layout("a few samples without .cls", unl)              # 8 of 40 without a label
    sparse = root / "sparse"
    write_layout("sparse class ids", sparse)                     # ids 3, 17, 42
    bad = root / "bad"
    bad.mkdir()
    import webdataset as wds
    with wds.TarWriter(str(bad / "part-0000.tar")) as w:
        for i in range(24):
            w.write({"__key__": f"img{i:04d}", "png": _png(i, broken=i == 5), "cls": str(i % 3)})
    return {"unlabelled": _index(unl), "sparse": _index(sparse), "bad": _index(bad),
            "lacks_42": _labelled(root / "lacks_42", [3, 17] * 5, "a"),
            "extra_5": _labelled(root / "extra_5", [3, 17, 42, 5] * 3, "b"),
            "named": _labelled(root / "named", ["cat", "dog"] * 5, "c")}


@pytest.fixture(scope="module")
def run(sets, tmp_path_factory):
    """Two steps on the set with 8 unlabelled samples, the kNN monitor on that same set; the
    encoder evaluated below. Returns (run dir, stderr of the run)."""
    import contextlib

    from clvr.cli import main
    out = tmp_path_factory.mktemp("run") / "run"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", *TINY, "--data", str(sets["unlabelled"]), "--val", str(sets["unlabelled"]),
                     "--out", str(out), "--set", "max_steps=2"])
    assert code == 0, err.getvalue()
    return out, err.getvalue()


def _events(run_dir: Path, kind: str) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [x for x in lines if x.get("event") == kind]


def test_the_knn_monitor_leaves_unlabelled_samples_out_and_says_how_many(run, sets):
    out, err = run
    said = f"the kNN monitor: train ({sets['unlabelled']}): 8 of 40 samples have no label (-1) and are left out"
    assert said in err
    assert "val" in err and "note: the kNN monitor: val" in err
    [train_event, val_event] = _events(out, "unlabelled")
    assert (train_event["set"], train_event["count"], train_event["samples"]) == ("train", 8, 40)
    assert val_event["set"] == "val" and val_event["count"] == 8
    knn = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "knn_top1" in x]
    assert knn and 0 <= knn[-1]["knn_top1"] <= 1


def test_eval_leaves_unlabelled_samples_out_of_knn_linear_and_label_subsets(clvr, run, sets, tmp_path):
    data = sets["unlabelled"]
    out = tmp_path / "eval"
    r = clvr("eval", "knn", run[0], "--train", data, "--val", data, "--out", out, *EVAL, "--set", "knn_k=[5]")
    assert r.code == 0, r.err
    assert "train: 8 of 40 samples have no label (-1) and are left out" in r.err
    assert "val: 8 of 40 samples have no label (-1) and are left out" in r.err
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["train"]["unlabelled_left_out"] == 8 and res["data"]["train"]["labelled_samples"] == 32
    assert res["data"]["val"]["unlabelled_left_out"] == 8
    assert "train: 8 of 40 samples have no label (-1) and are left out" in res["notes"]
    assert 0 <= res["protocols"]["knn"]["k5"]["learned"]["top1"] <= 1
    assert "have no label (-1)" in (out / "results.md").read_text()
    # linear probes and a label subset (drawn from the 32 labelled samples only)
    r = clvr("eval", "linear", run[0], "--train", data, "--val", data, "--out", out, *EVAL,
             "--set", "linear.epochs=2", "--set", "fractions=[0.25]")
    assert r.code == 0, r.err
    res = json.loads((out / "results.json").read_text())
    assert {"sgd", "logistic", "logistic_shares"} <= set(res["protocols"]["linear"])
    subset = json.loads((out / res["subsets"]["25%"]).read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    no_label = {int(s["key"]) for s in manifest["unlabelled"]["samples"]}      # keys are the writing order
    assert len(no_label) == 8 and not no_label & set(subset["index"])
    assert subset["unlabelled_left_out"] == 8 and sum(subset["per_class"].values()) == len(subset["index"]) == 8


def test_classes_compared_by_id(clvr, run, sets, tmp_path):
    train = sets["sparse"]
    # the val set lacks class 42: allowed, with a note naming it
    r = clvr("eval", "knn", run[0], "--train", train, "--val", sets["lacks_42"], "--out", tmp_path / "a", *EVAL,
             "--set", "knn_k=[5]")
    assert r.code == 0, r.err
    assert "note: train has classes 42 that val lacks" in r.err
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert any("train has classes 42 that val lacks" in n for n in res["notes"])
    assert "train has classes 42 that val lacks" in res["classes"]["notes"]["train/val"]
    # the val set has a class (5) that train has no sample of: refused, naming it
    r = clvr("eval", "knn", run[0], "--train", train, "--val", sets["extra_5"], "--out", tmp_path / "b", *EVAL)
    assert r.code == 2 and "val has classes 5 that train lacks" in r.err
    assert "17" not in r.err.split("val has classes")[1].split("that")[0]      # only the id at fault
    # class names for ids: id 0 is 'cat' in val but '0' in train -> renumber with --classes-from
    r = clvr("eval", "knn", run[0], "--train", train, "--val", sets["named"], "--out", tmp_path / "c", *EVAL)
    assert r.code == 2 and "id 0 is '0' in train but 'cat' in val" in r.err
    assert f"clvr shard index {sets['named']} --classes-from {train}" in r.err


def test_the_knn_monitor_refuses_val_classes_train_lacks(clvr, sets, tmp_path):
    r = clvr("train", *TINY, "--data", sets["sparse"], "--val", sets["extra_5"], "--out", tmp_path / "run",
             "--set", "max_steps=1")
    assert r.code == 2 and "the kNN monitor: val has classes 5 that train lacks" in r.err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_training_reports_every_skipped_sample(sets, tmp_path, capsys):
    from clvr.methods.trainer import train
    out = tmp_path / "run"
    summary = train("simclr", sets["bad"], out, sets=["model.backbone=tiny", "data.batch_size=8", "progress=false",
                                                      "tensorboard=false", "data.on_error=skip", "max_steps=3"])
    err = capsys.readouterr().err
    bad_tar = sets["bad"] / "part-0000.tar"
    line = next(x for x in err.splitlines() if "skipped a sample" in x)
    assert f"{bad_tar}: key img0005: png: cannot be decoded" in line
    assert summary["skipped_samples"] == 1 and summary["repeats_dropped"] >= 0
    [event] = _events(out, "skipped")
    assert (event["shard"], event["key"], event["set"]) == (str(bad_tar), "img0005", "data")
    assert "cannot be decoded" in event["reason"] and isinstance(event["step"], int) and event["epoch"] == 0


def test_eval_reports_every_skipped_sample(clvr, run, sets, tmp_path):
    out = tmp_path / "eval"
    data = sets["bad"]
    r = clvr("eval", "knn", run[0], "--train", data, "--val", data, "--out", out, *EVAL, "--set", "knn_k=[5]",
             "--on-error", "skip")
    assert r.code == 0, r.err
    bad_tar = data / "part-0000.tar"
    assert f"skipped a sample of --train: {bad_tar}: key img0005: png: cannot be decoded" in r.err
    assert f"skipped a sample of --val: {bad_tar}: key img0005" in r.err
    res = json.loads((out / "results.json").read_text())
    assert [(e["set"], e["key"]) for e in res["skipped_samples"]] == [("train", "img0005"), ("val", "img0005")]
    assert res["data"]["train"]["labelled_samples"] == 23
    # without --on-error skip the same sample stops the evaluation, by name
    r = clvr("eval", "knn", run[0], "--train", data, "--val", data, "--out", tmp_path / "raise", *EVAL)
    assert r.code == 2 and "key img0005" in r.err


def test_more_than_twenty_skips_show_the_first_twenty_and_a_count(capsys, tmp_path):
    from types import SimpleNamespace

    from clvr.methods.evaluate import Evaluation
    from clvr.methods.trainer import Trainer
    entries = [{"shard": "/d/x.tar", "key": f"k{i:02d}", "reason": "jpg: cannot be decoded"} for i in range(25)]
    # the trainer: every skip an event line, 20 lines on stderr, the rest counted at the epoch's end
    from clvr.methods.metrics import MetricsLog
    metrics = MetricsLog(tmp_path).open()
    t = SimpleNamespace(accelerator=SimpleNamespace(num_processes=1, is_main_process=True), step=7,
                        steps_per_epoch=4, loader=SimpleNamespace(skipped=entries, repeats_dropped=3),
                        knn_loaders=None, _skips_read={}, _skips_shown=0, _skips_unshown=0, skipped_samples=0,
                        repeats_dropped=0, SHOW_SKIPPED=Trainer.SHOW_SKIPPED)
    t._skip_sources = lambda: Trainer._skip_sources(t)
    t._write = lambda bar, text: print(text, file=__import__("sys").stderr)
    Trainer._report_skips(t, metrics, None, epoch_end=True)
    Trainer._report_skips(t, metrics, None, epoch_end=True)            # nothing new: nothing again
    err = capsys.readouterr().err.splitlines()
    assert [x for x in err if "skipped a sample" in x] == [
        f"clvr train: step 7: skipped a sample: /d/x.tar: key k{i:02d}: jpg: cannot be decoded" for i in range(20)]
    assert err[-1].startswith("clvr train: epoch 1: 5 more skipped sample(s) not shown (25 in all so far")
    metrics.close()
    events = [json.loads(x) for x in metrics.path.read_text().splitlines()]
    assert [e["key"] for e in events] == [f"k{i:02d}" for i in range(25)] and {e["event"] for e in events} == {"skipped"}
    assert (t.skipped_samples, t.repeats_dropped) == (25, 3)
    # clvr eval: each once in results.json, the first 20 on stderr
    ev = object.__new__(Evaluation)
    ev.results, ev.skipped_said, ev.skipped_shown = {"skipped_samples": []}, set(), 0
    ev._note_skipped("train", entries)
    ev._note_skipped("train", entries)
    assert len(ev.results["skipped_samples"]) == 25 and len(ev.skipped_said) == 25
    assert len([x for x in capsys.readouterr().err.splitlines() if "skipped a sample of --train" in x]) == 20

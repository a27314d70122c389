"""clvr eval: every protocol on tiny data, the numbers against references computed here, the
baselines, the label subsets, the report files and figures, and the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY_TRAIN = ["--method", "simclr", "--set", "model.backbone=tiny", "--set", "model.hidden=32", "--set",
              "model.dim=16", "--set", "data.batch_size=8", "--set", "progress=false", "--set", "tensorboard=false", "--set", "knn_k=5",
              "--set", "preset=paper"]
# small and quick: every protocol runs, with few epochs
FAST = ["--set", "knn_k=[200,5]", "--set", "linear.epochs=5", "--set", "fractions=[0.1]",
        "--set", "finetune.epochs=2", "--set", "supervised.epochs=2", "--set", "finetune.batch_size=16",
        "--set", "supervised.batch_size=16", "--set", "tsne_points=20", "--set", "progress=false",
        "--set", "batch_size=16"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    make_demo(root / "digits", limit=60)                       # 48 train, 12 val
    make_demo(root / "objects", "digits-objects", limit=30)    # the transfer target
    return root


@pytest.fixture(scope="module")
def run(data) -> Path:
    """A run of clvr train (tiny backbone, 2 epochs, the kNN monitor on): a run directory."""
    from clvr.cli import main
    out = data / "run"
    recipe = data / "recipe.yaml"
    recipe.write_text("base: simclr-cifar\nsize: 16\n")
    assert main(["train", *TINY_TRAIN, "--set", f"data.recipe={recipe}", "--data", str(data / "digits" / "train"), "--val",
                 str(data / "digits" / "val"), "--out", str(out), "--set", "epochs=2", "--set", "knn_every=1"]) == 0
    return out


@pytest.fixture(scope="module")
def report(data, run, tmp_path_factory):
    """``clvr eval all`` of the run, with transfer to the objects set; (exit code, out, stdout)."""
    import contextlib
    import io

    from clvr.cli import main
    out = tmp_path_factory.mktemp("report") / "eval"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["eval", "all", str(run), "--train", str(data / "digits" / "train"), "--val",
                     str(data / "digits" / "val"), "--transfer-train", str(data / "objects" / "train"),
                     "--transfer-val", str(data / "objects" / "val"), "--out", str(out), *FAST])
    return code, out, stdout.getvalue()


def results(report) -> dict:
    return json.loads((report[1] / "results.json").read_text())


def is_score(x) -> bool:
    return isinstance(x, dict) and 0 <= x["top1"] <= 1 and ("top5" not in x or x["top1"] <= x["top5"] <= 1)


def test_all_protocols_score_the_encoder_and_both_baselines(report):
    code, out, stdout = report
    assert code == 0
    r = results(report)
    assert r["format"] == "clvr-eval-results" and r["encoder"]["method"] == "simclr"
    p = r["protocols"]
    assert set(p) == {"knn", "linear", "svm", "semi", "transfer"}
    entries = [p["knn"]["k200"], p["knn"]["k5"], p["linear"]["sgd"], p["linear"]["logistic"],
               p["svm"]["linear_svm"], p["semi"]["10%"], p["transfer"]["linear"], p["transfer"]["finetune"]]
    for entry in entries:
        assert {"learned", "random_init", "supervised"} <= set(entry)
        assert all(is_score(entry[k]) for k in ("learned", "random_init", "supervised")), entry
    assert set(r["supervised_from_scratch"]) == {"10%", "100%"}
    assert r["supervised_from_scratch"]["100%"]["labelled_samples"] == r["data"]["train"]["samples"] == 48
    assert p["semi"]["10%"]["supervised"] == {k: r["supervised_from_scratch"]["10%"][k] for k in ("top1", "top5")}
    assert r["skipped"] == {}
    # the printed table has a row per protocol and setting
    for row in ("k=200", "k=5", "SGD", "logistic regression", "linear SVM", "semi-supervised",
                "transfer", "supervised from scratch"):
        assert row in stdout, row


def test_the_report_files_and_figures(report):
    _, out, _ = report
    r = results(report)
    md = (out / "results.md").read_text()
    assert "| protocol | setting | labels | simclr | raw pixels | random init | supervised | simclr − random |" in md
    assert md.count("\n| ") >= 10                                       # header + every row
    expected = {"loss_curve.png", "knn_curve.png", "embedding_pca.png", "embedding_tsne.png", "views.png"}
    assert set(r["plots"].values()) == expected
    from PIL import Image
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == PNG, name
        with Image.open(out / name) as im:
            assert im.size[0] > 200 and im.size[1] > 100 and len(set(im.convert("RGB").getdata())) > 8
        assert f"]({name})" in md
    assert (out / "encoder.safetensors").is_file() and (out / "encoder.json").is_file()
    # the views figure is drawn on the shards the run trained on, which the run recorded
    recorded = json.loads((Path(r["encoder"]["run_dir"]) / "data.json").read_text())
    assert recorded["data"].endswith("digits/train") and recorded["val"].endswith("digits/val")


def test_knn_numbers_are_the_formula_on_the_cached_features(report):
    """Recompute kNN top-1 from the cached features with a float64 reference written here."""
    _, out, _ = report
    r = results(report)
    cached = {tuple(p.name.split("-")[1:3]): p for p in (out / "cache").glob("features-*")}
    for which in ("learned", "random_init", "supervised"):
        f, lab, _ = torch.load(cached[(which, "train")], weights_only=True)
        vf, vlab, _ = torch.load(cached[(which, "val")], weights_only=True)
        for k in (200, 5):
            a = f.double() / f.double().norm(dim=1, keepdim=True)
            q = vf.double() / vf.double().norm(dim=1, keepdim=True)
            sim = q @ a.T
            kk = min(k, len(lab))
            top, idx = sim.topk(kk, dim=1)
            votes = torch.zeros(len(q), 10, dtype=torch.float64)
            votes.scatter_add_(1, lab[idx], torch.exp(top / 0.07))
            top1 = float((votes.argmax(1) == vlab).double().mean())
            assert math.isclose(r["protocols"]["knn"][f"k{k}"][which]["top1"], top1, abs_tol=1e-9), (which, k)


def test_the_report_gives_the_effective_rank_of_each_encoders_val_features(report):
    """Issue 22: beside the scores, whether the representation uses its dimensions (a float64
    reference of the effective rank on the cached val features), in results.json and the notes."""
    import numpy as np
    _, out, _ = report
    r = results(report)
    cached = {tuple(p.name.split("-")[1:3]): p for p in (out / "cache").glob("features-*")}
    rep = r["representation"]
    assert set(rep) == {"learned", "random_init", "supervised"}
    for which, entry in rep.items():
        f = torch.load(cached[(which, "val")], weights_only=True)[0].double().numpy()
        sv = np.linalg.svd(f - f.mean(0), compute_uv=False)
        p = sv / sv.sum()
        p = p[p > 0]
        assert math.isclose(entry["effective_rank"], float(np.exp(-(p * np.log(p)).sum())), abs_tol=0.01), which
        assert entry["most"] == min(f.shape)
    assert isinstance(rep["learned"]["dimensional_collapse"], bool)
    note = next(n for n in r["notes"] if n.startswith("representation:"))
    assert f"effective rank is {rep['learned']['effective_rank']:.1f} of at most {rep['learned']['most']}" in note
    assert "random init" in note


def test_logistic_and_svm_are_sklearn_on_the_standardised_features(report):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    _, out, _ = report
    r = results(report)
    cached = {tuple(p.name.split("-")[1:3]): p for p in (out / "cache").glob("features-*")}
    f, lab, _ = torch.load(cached[("learned", "train")], weights_only=True)
    vf, vlab, _ = torch.load(cached[("learned", "val")], weights_only=True)
    mean, std = f.mean(0), f.std(0).clamp(min=1e-6)
    x, vx = ((f - mean) / std).numpy(), ((vf - mean) / std).numpy()
    logistic = LogisticRegression(C=1.0, max_iter=1000).fit(x, lab.numpy())
    svm = LinearSVC(C=1.0).fit(x, lab.numpy())
    assert math.isclose(r["protocols"]["linear"]["logistic"]["learned"]["top1"],
                        float((logistic.predict(vx) == vlab.numpy()).mean()), abs_tol=1e-6)
    assert math.isclose(r["protocols"]["svm"]["linear_svm"]["learned"]["top1"],
                        float((svm.predict(vx) == vlab.numpy()).mean()), abs_tol=1e-6)


def test_the_learned_features_are_the_exported_encoder_and_random_init_is_seeded(report, data):
    from clvr.methods.export import load_encoder
    from clvr.methods.features import eval_loader, extract_features
    _, out, _ = report
    cached = {tuple(p.name.split("-")[1:3]): p for p in (out / "cache").glob("features-*")}
    f, _, idx = torch.load(cached[("learned", "val")], weights_only=True)
    loader = eval_loader(data / "digits" / "val", batch_size=5, size=16, device="cpu")
    again, _, idx2 = extract_features(load_encoder(out / "encoder.safetensors"), loader)
    assert torch.equal(idx, idx2) and torch.allclose(f, again, atol=1e-5)
    r, _, _ = torch.load(cached[("random_init", "val")], weights_only=True)
    assert not torch.allclose(f, r, atol=1e-3)                       # not the learned weights
    from clvr.methods.evaluate import Evaluation
    ev = Evaluation(out / "encoder.safetensors", data / "digits" / "train", data / "digits" / "val",
                    out.parent / "again")
    a, b = ev.random_init(), ev.random_init()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ev.config.seed = 1
    c = ev.random_init()
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_semi_supervised_fine_tunes_on_the_written_class_balanced_subset(report, data, monkeypatch):
    from clvr.methods import evaluate as evaluate_mod
    from clvr.methods.label_subsets import read_subset
    _, out, _ = report
    r = results(report)
    path = out / r["subsets"]["10%"]
    chosen = read_subset(path)
    meta = json.loads(path.read_text())
    assert meta["per_class"] == {str(c): 1 for c in range(10)} or all(v >= 1 for v in meta["per_class"].values())
    assert r["protocols"]["semi"]["10%"]["labelled_samples"] == len(chosen)
    # the fine-tuning reads exactly those samples: run the protocol again and watch
    seen = []
    real = evaluate_mod.finetune

    def spy(*args, samples=None, **kw):
        seen.append(None if samples is None else sorted(int(i) for i in samples))
        return real(*args, samples=samples, **kw)

    monkeypatch.setattr(evaluate_mod, "finetune", spy)
    from clvr.methods import eval_config
    config = eval_config.build(sets=[s for s in FAST if s != "--set"])
    ev = evaluate_mod.Evaluation(out / "encoder.safetensors", data / "digits" / "train", data / "digits" / "val",
                                 out, config)
    ev.semi()
    assert seen[:2] == [chosen.tolist(), chosen.tolist()]          # learned and random init
    # labels of the subset: class-balanced, as drawn from the features' labels
    _, labels, index = ev.features("learned", "train")
    by_index = dict(zip(index.tolist(), labels.tolist()))
    counts = np.bincount([by_index[i] for i in chosen.tolist()], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.min() >= 1


def test_protocols_run_one_at_a_time_add_up(data, run, tmp_path, clvr):
    out = tmp_path / "eval"
    common = ["--train", data / "digits" / "train", "--val", data / "digits" / "val", "--out", out,
              "--no-plots", *FAST]
    r = clvr("eval", "knn", run, *common)
    assert r.code == 0, r.err
    assert "kNN" in r.out and "linear" not in r.out
    r = clvr("eval", "svm", run, *common, "--no-baselines")
    assert r.code == 0, r.err
    res = json.loads((out / "results.json").read_text())
    # another config: the earlier results are not mixed in
    assert set(res["protocols"]) == {"svm"} and set(res["protocols"]["svm"]["linear_svm"]) == {"learned"}
    r = clvr("eval", "knn", run, *common, "--no-baselines")
    assert r.code == 0, r.err
    res = json.loads((out / "results.json").read_text())
    assert set(res["protocols"]) == {"svm", "knn"}


def test_errors_name_what_is_wrong(data, run, tmp_path, clvr):
    train, val = data / "digits" / "train", data / "digits" / "val"
    r = clvr("eval", "knn", tmp_path / "nope", "--train", train, "--val", val)
    assert r.code == 2 and "nope" in r.err and "no such encoder" in r.err
    import shutil
    other = tmp_path / "other"
    shutil.copytree(val, other)
    m = json.loads((other / "manifest.json").read_text())
    m["classes"]["names"] = list(reversed(m["classes"]["names"]))
    (other / "manifest.json").write_text(json.dumps(m))
    r = clvr("eval", "knn", run, "--train", train, "--val", other, "--out", tmp_path / "a")
    assert r.code == 2 and "same classes" in r.err
    r = clvr("eval", "knn", run, "--train", train, "--val", tmp_path / "missing", "--out", tmp_path / "b")
    assert r.code == 2 and "missing" in r.err
    r = clvr("eval", "knn", run, "--train", train, "--val", val, "--set", "knn_kk=3")
    assert r.code == 2 and "knn_k" in r.err
    r = clvr("eval", "semi", run, "--train", train, "--val", val, "--set", "fractions=[1.5]")
    assert r.code == 2 and "fractions" in r.err
    r = clvr("eval", "all", run, "--train", train, "--val", val, "--transfer-train", train)
    assert r.code == 2 and "--transfer-val" in r.err
    r = clvr("eval", "bogus", run, "--train", train, "--val", val)
    assert r.code == 2


def test_unlabelled_shards_are_refused(data, run, tmp_path, clvr):
    import shutil
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(data / "digits" / "val", unlabelled)
    m = json.loads((unlabelled / "manifest.json").read_text())
    m.pop("classes", None)
    (unlabelled / "manifest.json").write_text(json.dumps(m))
    r = clvr("eval", "knn", run, "--train", data / "digits" / "train", "--val", unlabelled, "--out", tmp_path / "o")
    assert r.code == 2 and "unlabelled" in r.err and "labelled" in r.err


def test_masked_cross_entropy_ignores_padding():
    from clvr.methods.finetune import masked_cross_entropy
    torch.manual_seed(0)
    logits = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    valid = torch.tensor([True, True, False, True, False])
    ref = 0.0
    for row, y in zip(logits[valid], labels[valid]):
        ref += -(row[y] - torch.log(torch.exp(row).sum()))
    assert torch.allclose(masked_cross_entropy(logits, labels, valid), ref / 3)


def test_the_demo_pieces_on_a_short_schedule(tmp_path, capsys):
    from clvr.methods.demo import run_demo
    code = run_demo("digits", out=tmp_path / "demo", epochs=1, limit=60,
                    sets=["data.batch_size=16", "knn_every=1", "progress=false"],
                    eval_sets=["supervised.epochs=1", "finetune.epochs=1", "linear.epochs=3", "progress=false",
                               "fractions=[0.1]"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = json.loads((tmp_path / "demo" / "eval" / "results.json").read_text())
    assert set(res["protocols"]) == {"knn", "linear", "semi"}
    assert res["encoder"]["architecture"]["options"] == {"stem": "cifar", "norm": "batch", "width": 16}
    assert "semi-supervised" in captured.out and "random init" in captured.out
    # a second call reuses the finished run and the shards
    code = run_demo("digits", out=tmp_path / "demo", epochs=1, limit=60,
                    sets=["data.batch_size=16", "knn_every=1", "progress=false"],
                    eval_sets=["supervised.epochs=1", "finetune.epochs=1", "linear.epochs=3", "progress=false",
                               "fractions=[0.1]"])
    assert code == 0 and "reusing" in capsys.readouterr().err


def test_the_readme_demo_table_is_the_demo_results():
    """The README's demo block is pasted from the command's output (docs/readme_demo.py), and its
    results file is kept beside the docs: the table must be what that file renders."""
    import re

    from clvr.methods.report import text_table
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = re.search(r"<!-- demo output -->\n```\n(.*?)```\n<!-- /demo output -->", readme, re.S)
    assert block, "README.md keeps the demo's output between its markers"
    results = json.loads((root / "docs" / "demo-results.json").read_text())
    assert text_table(results) in block.group(1), "run make demo, then python docs/readme_demo.py"
    assert results["encoder"]["method"] == "simclr" and set(results["protocols"]) == {"knn", "linear", "semi"}
    knn, linear = results["protocols"]["knn"]["k200"], results["protocols"]["linear"]["logistic"]
    # the demo's promise: a clear margin over random-init features on kNN and linear
    assert knn["learned"]["top1"] - knn["random_init"]["top1"] > 0.1
    assert linear["learned"]["top1"] - linear["random_init"]["top1"] > 0.1


def test_review_fixes_bad_settings_logs_and_subset_files(data, run, tmp_path, clvr):
    import shutil
    train, val = data / "digits" / "train", data / "digits" / "val"
    # a scalar where a list is expected is a usage error, not a traceback
    r = clvr("eval", "knn", run, "--train", train, "--val", val, "--set", "knn_k=200")
    assert r.code == 2 and "must be lists" in r.err
    # a run killed mid-line: the report is still written, the curves are skipped with the reason
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    with open(broken / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 1.')
    out = tmp_path / "eval"
    r = clvr("eval", "knn", broken, "--train", train, "--val", val, "--out", out, "--no-baselines", *FAST)
    assert r.code == 0, r.err
    res = json.loads((out / "results.json").read_text())
    assert "line" in res["skipped"]["pre-training curves"] and "embedding_pca.png" in res["plots"].values()
    # a subset file of other shards is refused, naming it
    bad = out / "subsets" / "train-10pct-seed0.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text(json.dumps({"format": "clvr-label-subset", "fraction": 0.1, "index": [99999]}))
    r = clvr("eval", "semi", broken, "--train", train, "--val", val, "--out", out, "--no-baselines", *FAST)
    assert r.code == 2 and "train-10pct-seed0.json" in r.err and "99999" in r.err


def test_transfer_without_source_has_no_supervised_baseline(data, run, tmp_path, clvr):
    out = tmp_path / "t"
    r = clvr("eval", "transfer", run, "--train", data / "objects" / "train", "--val", data / "objects" / "val",
             "--out", out, "--no-plots", *FAST, "--set", "baselines=[supervised]")
    assert r.code == 0, r.err
    res = json.loads((out / "results.json").read_text())
    assert set(res["protocols"]["transfer"]["linear"]) == {"learned"}
    assert "--source" in res["skipped"]["transfer: supervised"]


def test_fine_tuning_views_use_the_encoders_normalisation():
    from clvr.methods.finetune import FinetuneConfig, train_recipe
    from clvr.pipeline.recipe import build
    recipe = build(train_recipe(FinetuneConfig(crop_scale=(0.5, 1.0)), 24, {"mean": [0.5] * 3, "std": [0.2] * 3}))[0]
    assert recipe.size == 24 and recipe.crop.scale == (0.5, 1.0) and recipe.flip.p == 0.5
    assert tuple(recipe.normalize.mean) == (0.5,) * 3 and tuple(recipe.normalize.std) == (0.2,) * 3
    assert recipe.jitter.p == 0 and recipe.grayscale.p == 0 and recipe.blur.p == 0

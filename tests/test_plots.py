"""The report's figures: valid non-blank PNGs written atomically, PCA against an eigen-decomposition,
t-SNE's seeded subsample, metrics.jsonl reading (bad lines, resumed runs), clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from clvr.methods import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path, min_size=(300, 200)):
    """A valid, plausibly sized, non-blank PNG; returns its text chunks."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], im.size
        assert im.size[0] <= 4000 and im.size[1] <= 3000, im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 20, "a blank (or nearly blank) image"
        text = dict(im.text)
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temporary file was left behind"
    return text


def training_records(steps=30, nan_at=(), lr=True):
    out = []
    for s in range(1, steps + 1):
        r = {"step": s, "epoch": (s - 1) // 10, "images_per_s": 100.0,
             "loss": float("nan") if s in nan_at else 6.0 - 0.1 * s + 0.05 * math.sin(s)}
        if lr:
            r["lr"] = 0.4 * s / steps
        if s in nan_at:
            r["skipped"] = 1
        out.append(r)
    return out


def knn_records(epochs=(1.0, 2.0, 3.0), top5=True):
    out = []
    for i, e in enumerate(epochs):
        r = {"step": int(e * 10), "epoch": e, "knn_top1": 0.1 + 0.2 * i}
        if top5:
            r["knn_top5"] = 0.4 + 0.15 * i
        out.append(r)
    return out


def write_jsonl(path, lines):
    path.write_text("".join(x if isinstance(x, str) else json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def blobs():
    """60 points in 8-D, 4 well separated classes."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 15)
    centres = rng.normal(scale=5.0, size=(4, 8))
    return centres[labels] + rng.normal(size=(60, 8)), labels


# -- read_metrics ---------------------------------------------------------------------------------

def test_read_metrics_keeps_the_last_record_of_each_step_and_kind(tmp_path):
    lines = [*training_records(4), {"step": 4, "epoch": 0.4, "knn_top1": 0.2},
             "\n",
             # killed after step 4, resumed from the checkpoint of step 2: steps 3 and 4 again
             {"step": 3, "epoch": 0, "loss": 1.5}, {"step": 4, "epoch": 0, "loss": 1.25},
             {"step": 4, "epoch": 0.4, "knn_top1": 0.3}, {"step": 5, "epoch": 0, "loss": 1.0}]
    records = plots.read_metrics(write_jsonl(tmp_path / "metrics.jsonl", lines))
    assert [(r["step"], "knn_top1" in r) for r in records] == [
        (1, False), (2, False), (3, False), (4, False), (4, True), (5, False)]
    assert records[2]["loss"] == 1.5 and records[3]["loss"] == 1.25 and records[4]["knn_top1"] == 0.3
    assert records[0]["loss"] == training_records(1)[0]["loss"]


def test_read_metrics_reads_nan_and_names_a_bad_line(tmp_path):
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"step": 1, "loss": NaN, "skipped": 1}\n')
    assert math.isnan(plots.read_metrics(ok)[0]["loss"])
    bad = write_jsonl(tmp_path / "bad.jsonl", [*training_records(2), '{"step": 3, "loss": \n'])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: not valid JSON"):
        plots.read_metrics(bad)
    nostep = write_jsonl(tmp_path / "nostep.jsonl", ["\n", '[1, 2]\n'])
    with pytest.raises(ValueError, match=r"nostep\.jsonl, line 2: .*integer \"step\""):
        plots.read_metrics(nostep)


def test_curves_available():
    assert plots.curves_available(training_records(3)) == {"loss": True, "knn": False}
    assert plots.curves_available(knn_records()) == {"loss": False, "knn": True}
    assert plots.curves_available([]) == {"loss": False, "knn": False}


# -- loss and kNN curves --------------------------------------------------------------------------

def test_loss_curve_writes_a_png_and_reports_skipped_steps(tmp_path):
    records = training_records(30, nan_at=(7, 8, 20)) + knn_records()
    out = plots.loss_curve(records, tmp_path / "loss.png", title="simclr")
    assert out == tmp_path / "loss.png"
    text = check_png(out)
    assert text["Title"].startswith("simclr") and "3 skipped steps" in text["Title"]
    assert "27 logged steps, 3 skipped" in text["Description"]
    # no NaN, no lr, no kNN records (epoch ticks from the training records): still drawn
    text = check_png(plots.loss_curve(training_records(30, lr=False), tmp_path / "loss.png"))
    assert "skipped" not in text["Title"]


def test_curves_refuse_records_without_their_data(tmp_path):
    with pytest.raises(ValueError, match="no training record"):
        plots.loss_curve(knn_records(), tmp_path / "loss.png")
    with pytest.raises(ValueError, match="no kNN record"):
        plots.knn_curve(training_records(5), tmp_path / "knn.png")
    with pytest.raises(ValueError, match=r"\.png"):
        plots.loss_curve(training_records(5), tmp_path / "loss.jpg")
    with pytest.raises(ValueError, match="baseline 'random init'"):
        plots.knn_curve(knn_records(), tmp_path / "knn.png", baselines={"random init": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_knn_curve_writes_a_png_with_the_last_values(tmp_path):
    out = plots.knn_curve(training_records(30) + knn_records(), tmp_path / "knn.png",
                          baselines={"random init": 0.12, "supervised": 0.9})
    text = check_png(out)
    assert "top-1 0.5000 at epoch 3" in text["Description"] and "top-5 0.7000" in text["Description"]
    text = check_png(plots.knn_curve(knn_records((2.0,), top5=False), tmp_path / "knn.png"))
    assert "top-5" not in text["Description"]


# -- projections ----------------------------------------------------------------------------------

def test_pca_matches_the_covariance_eigendecomposition(blobs):
    x, _ = blobs
    projected = plots.pca(x.astype(np.float32), dim=3)
    assert projected.dtype == np.float64 and projected.shape == (60, 3)
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    values, vectors = values[::-1][:3], vectors[:, ::-1][:, :3]
    np.testing.assert_allclose(projected.var(axis=0, ddof=1), values, rtol=1e-5)
    reference = centred @ vectors
    signs = np.sign((projected * reference).sum(axis=0))
    np.testing.assert_allclose(projected, reference * signs, atol=1e-3 * np.abs(reference).max())
    # deterministic sign: the largest loading of each component is positive, whatever the row order
    exact = plots.pca(x, dim=3)
    np.testing.assert_allclose(plots.pca(x[::-1], dim=3)[::-1], exact, atol=1e-9)
    np.testing.assert_allclose(plots.pca(-x, dim=3), -exact, atol=1e-9)
    np.testing.assert_allclose(exact, reference * signs, atol=1e-9)
    with pytest.raises(ValueError, match="dim must be between 1 and"):
        plots.pca(x, dim=9)


def test_pca_of_rank_two_data_preserves_distances():
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(50, 2)) @ rng.normal(size=(2, 6)) + rng.normal(size=6)
    projected = plots.pca(plane)

    def distances(a):
        return np.linalg.norm(a[:, None] - a[None], axis=-1)
    np.testing.assert_allclose(distances(projected), distances(plane), atol=1e-9)


def test_tsne_subsamples_reproducibly(blobs):
    x, _ = blobs
    points, index = plots.tsne(x, seed=3, max_points=25)
    assert points.shape == (25, 2) and points.dtype == np.float64 and np.isfinite(points).all()
    assert index.shape == (25,) and len(set(index.tolist())) == 25
    assert (np.diff(index) > 0).all() and index.min() >= 0 and index.max() < 60
    again, same = plots.tsne(x, seed=3, max_points=25)
    np.testing.assert_array_equal(same, index)
    np.testing.assert_allclose(again, points)
    _, other = plots.tsne(x, seed=4, max_points=25)
    assert not np.array_equal(other, index)
    _, every = plots.tsne(x[:12], max_points=25)
    np.testing.assert_array_equal(every, np.arange(12))


# -- embedding plot -------------------------------------------------------------------------------

def test_embedding_plot_pca_and_tsne(blobs, tmp_path):
    torch = pytest.importorskip("torch")
    x, labels = blobs
    noise = np.random.default_rng(2).normal(size=x.shape)
    panels = {"simclr": torch.tensor(x, dtype=torch.float32), "random init": noise}
    out = plots.embedding_plot(panels, torch.tensor(labels), tmp_path / "pca.png",
                               class_names=["cat", "dog", "car", "ship"], title="digits")
    text = check_png(out, min_size=(700, 300))
    assert text["Title"] == "digits (60 samples)" and "4 classes" in text["Description"]
    (tmp_path / "pca.png").unlink()
    out = plots.embedding_plot(panels, labels, tmp_path / "tsne.png", method="tsne", max_points=40)
    text = check_png(out, min_size=(700, 300))
    assert "(40 of 60 samples)" in text["Title"]


def test_embedding_plot_many_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 15  # tab20
    out = plots.embedding_plot({"a": rng.normal(size=(60, 5))}, labels, tmp_path / "e.png")
    check_png(out)


def test_embedding_plot_refuses_bad_labels(blobs, tmp_path):
    x, labels = blobs
    bad = labels.copy()
    bad[3] = -1
    with pytest.raises(ValueError, match=r"must be >= 0; 1 label\(s\) are negative"):
        plots.embedding_plot({"a": x}, bad, tmp_path / "e.png")
    with pytest.raises(ValueError, match=r"panel 'b' has 59 rows but there are 60 labels"):
        plots.embedding_plot({"a": x, "b": x[1:]}, labels, tmp_path / "e.png")
    with pytest.raises(ValueError, match="method must be 'pca' or 'tsne'"):
        plots.embedding_plot({"a": x}, labels, tmp_path / "e.png", method="umap")
    with pytest.raises(ValueError, match="class_names: 2 name"):
        plots.embedding_plot({"a": x}, labels, tmp_path / "e.png", class_names=["x", "y"])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_drawing_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    def broken(self, fh, **kwargs):
        fh.write(b"\x89PNG half")
        raise RuntimeError("disk full")
    (tmp_path / "loss.png").write_bytes(b"old")
    monkeypatch.setattr(FigureCanvasAgg, "print_png", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.loss_curve(training_records(5), tmp_path / "loss.png")
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
    assert (tmp_path / "loss.png").read_bytes() == b"old", "the previous figure is intact"


def test_importing_is_cheap_and_drawing_never_uses_pyplot(tmp_path):
    import subprocess
    import sys
    code = f"""
import sys
import clvr.methods.plots as plots
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'matplotlib', 'sklearn', 'torch'))
assert not heavy, heavy
plots.loss_curve([{{"step": 1, "loss": 2.0}}, {{"step": 2, "loss": 1.0}}], {str(tmp_path / "l.png")!r})
assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert (tmp_path / "l.png").read_bytes()[:8] == PNG_SIGNATURE

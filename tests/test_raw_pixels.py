"""The raw-pixel baseline of clvr eval: the eval view's pixels as the features, under kNN and
logistic regression at every label share, against float64 references computed here from the
PNGs in the shards (decoded with PIL) and scikit-learn."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def shard_pixels(split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels (N, 3*32*32) float64, normalised as the eval view does, labels, index), read
    from the tar members with PIL, sorted by index."""
    rows, labels, index = {}, {}, {}
    for tar in sorted(split.glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, _, ext = m.name.partition(".")
                data = t.extractfile(m).read()
                if ext == "png":
                    x = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64) / 255.0
                    rows[key] = ((x - MEAN) / STD).transpose(2, 0, 1).reshape(-1)
                elif ext == "cls":
                    labels[key] = int(data)
                elif ext == "index.i64":
                    index[key] = int(np.frombuffer(data, "<i8")[0])
    keys = sorted(rows, key=lambda k: index[k])
    return (np.stack([rows[k] for k in keys]), np.array([labels[k] for k in keys]),
            np.array([index[k] for k in keys]))


def knn_reference(f, lab, q, k, t, classes=10) -> np.ndarray:
    """InstDisc's weighted vote in float64: cosine similarity, each of the k nearest votes exp(s / t)."""
    a = f / np.linalg.norm(f, axis=1, keepdims=True)
    b = q / np.linalg.norm(q, axis=1, keepdims=True)
    sim = b @ a.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(q), classes))
    for i in range(len(q)):
        np.add.at(votes[i], lab[idx[i]], np.exp(sim[i, idx[i]] / t))
    return votes.argmax(1)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """clvr eval knn + linear of a random-weights encoder with only the raw-pixel baseline, at
    the shards' own 32 px (so the eval view is the PNG itself, normalised)."""
    from safetensors.torch import save_file

    from clvr.methods import eval_config, export
    from clvr.methods.backbones import backbone
    from clvr.methods.evaluate import Evaluation
    root = tmp_path_factory.mktemp("raw")
    make_demo(root / "digits", limit=120)
    torch.manual_seed(0)
    net = backbone("tiny", stem="cifar")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, root / "enc.safetensors")
    sidecar = {"format": export.FORMAT, "format_version": export.FORMAT_VERSION, "weights": "enc.safetensors",
               "architecture": {"kind": "image", "name": "tiny", "options": {"stem": "cifar"},
                                "num_features": int(net.num_features)},
               "input": {"size": 32, "mean": list(MEAN), "std": list(STD)}, "method": "tiny"}
    (root / "enc.json").write_text(json.dumps(sidecar))
    config = eval_config.build(overrides={"baselines": ["raw_pixels"], "knn_k": [20, 5], "fractions": [0.1],
                                          "plots": False, "progress": False, "size": 32, "raw_pixels_size": 32})
    ev = Evaluation(root / "enc.safetensors", root / "digits" / "train", root / "digits" / "val", root / "out", config)
    ev.run(["knn", "linear"])
    return root, ev


def test_raw_pixel_features_are_the_eval_views_pixels(evaluated):
    root, ev = evaluated
    for key in ("train", "val"):
        f, lab, idx = ev.features("raw_pixels", key)
        ref, ref_lab, ref_idx = shard_pixels(root / "digits" / key)
        assert f.shape == (len(ref), 3 * 32 * 32)
        assert np.array_equal(idx.numpy(), ref_idx) and np.array_equal(lab.numpy(), ref_lab)
        assert np.allclose(f.double().numpy(), ref, atol=1e-5)


def test_raw_pixel_knn_and_logistic_match_float64_references(evaluated):
    from sklearn.linear_model import LogisticRegression
    root, ev = evaluated
    p = ev.results["protocols"]
    f, lab, idx = shard_pixels(root / "digits" / "train")
    q, qlab, _ = shard_pixels(root / "digits" / "val")
    one = 1 / len(qlab)                          # float32 features against float64: at most one flip
    for k in (20, 5):
        ref = float((knn_reference(f, lab, q, k, 0.07) == qlab).mean())
        assert math.isclose(p["knn"][f"k{k}"]["raw_pixels"]["top1"], ref, abs_tol=one + 1e-9), k
    mean, std = f.mean(0), np.maximum(f.std(0, ddof=1), 1e-6)
    x, vx = (f - mean) / std, (q - mean) / std
    full = LogisticRegression(C=1.0, max_iter=1000).fit(x, lab)
    assert math.isclose(p["linear"]["logistic"]["raw_pixels"]["top1"], float((full.predict(vx) == qlab).mean()),
                        abs_tol=one + 1e-9)
    # the 10% share: fitted on exactly the subset's samples, standardised with the whole train set
    subset = json.loads((root / "out" / "subsets" / "train-10pct-seed0.json").read_text())
    chosen = np.isin(idx, np.array(subset["index"]))
    assert chosen.sum() == p["linear"]["logistic_shares"]["10%"]["labelled_samples"] < len(idx)
    part = LogisticRegression(C=1.0, max_iter=1000).fit(x[chosen], lab[chosen])
    got = p["linear"]["logistic_shares"]["10%"]
    assert math.isclose(got["raw_pixels"]["top1"], float((part.predict(vx) == qlab).mean()), abs_tol=one + 1e-9)
    assert set(got) == {"labelled_samples", "learned", "raw_pixels"}


def test_raw_pixels_are_pooled_to_the_configured_side():
    from clvr.methods.features import RawPixels
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = RawPixels(4)(x)
    ref = x.double().numpy().reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5)).reshape(2, -1)
    assert out.shape == (2, 48) and np.allclose(out.double().numpy(), ref)
    assert torch.equal(RawPixels(32)(x), x.flatten(1))           # already small enough: untouched
    clips = x[:, None].repeat(1, 4, 1, 1, 1)                     # (B, T, 3, H, W): averaged over time
    assert torch.allclose(RawPixels(8)(clips), x.flatten(1))
    with pytest.raises(ValueError, match="max_side"):
        RawPixels(0)


def test_the_table_has_a_raw_pixels_column_and_share_rows(evaluated):
    from clvr.methods.report import header, table_rows
    _, ev = evaluated
    head = header(ev.results)
    assert head[3:6] == ["tiny", "raw pixels", "random init"] or head[4] == "raw pixels"
    rows = table_rows(ev.results)
    shares = [r for r in rows if r[0] == "linear" and r[2] == "10%"]
    assert len(shares) == 1
    assert shares[0][4] == f"{100 * ev.results['protocols']['linear']['logistic_shares']['10%']['raw_pixels']['top1']:.1f}"
    assert all(len(r) == len(head) for r in rows)

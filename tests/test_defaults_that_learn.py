"""Defaults that learn (issue 22): a shard set's recommended recipe in its manifest, used by
``clvr train`` with no recipe flag; the view check before the first step; the plan's monitor line.

Before: ``clvr train --method simclr --data digits/train`` trained the generic 32-px CIFAR recipe,
whose views keep the digits' colours (kNN 13%, chance 10%), and said nothing about it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from clvr.pipeline.view_check import STRONG, check_views, colour_features, partner_rate, thumbnail_features
from clvr.shards.demo import DIGITS_RECIPE
from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--set", "model.backbone=tiny", "--set", "data.batch_size=8", "--set", "progress=false",
        "--set", "tensorboard=false", "--set", "max_steps=2"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("defaults") / "digits", limit=60)


# ----------------------------------------------------------------------------- the view check

def partner_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Loop by loop: the share of rows whose nearest row of the other view is their partner."""
    n = len(a)
    hits = 0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            d = [math.dist(x[i], y[j]) for j in range(n)]
            hits += int(int(np.argmin(d)) == i)
    return hits / (2 * n)


def test_partner_rate_and_the_features_are_their_formulas():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 6))
    b = a + rng.normal(scale=0.8, size=(40, 6))
    assert partner_rate(torch.tensor(a), torch.tensor(b)) == pytest.approx(partner_reference(a, b), abs=1e-12)
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    want = np.stack([np.concatenate([np.quantile(img.reshape(3, -1), 0.1, axis=1),
                                     np.quantile(img.reshape(3, -1), 0.9, axis=1)]) for img in x.numpy()])
    assert np.allclose(colour_features(x).numpy(), want, atol=1e-6)
    thumb = x.numpy().reshape(5, 3, 4, 2, 4, 2).mean(axis=(3, 5)).reshape(5, -1)
    assert np.allclose(thumbnail_features(x).numpy(), thumb, atol=1e-6)


def test_a_colour_shortcut_is_found_and_named_and_distorted_colours_are_not():
    g = torch.Generator().manual_seed(1)
    n = 128
    colours = torch.rand(n, 3, 1, 1, generator=g)
    shapes = torch.rand(n, 1, 8, 8, generator=g)
    image = colours * shapes                              # each image: its own colour on its own shape
    other = colours * torch.rand(n, 1, 8, 8, generator=g)     # the partner: same colour, another layout
    check = check_views(image, other, recipe="data.recipe x")
    assert check.rates["colour"] > 0.5 and "colour" in check.strong()
    assert check.rates["colour"] >= STRONG["colour"] * check.chance
    (warning,) = [w for w in check.warnings() if "colour shortcut" in w]
    assert "jitter.p" in warning and "grayscale.p" in warning and "data.recipe x" in warning
    # partners whose colours are drawn again: colour finds them at about chance
    recoloured = torch.rand(n, 3, 1, 1, generator=g) * shapes
    fair = check_views(image, recoloured)
    assert "colour" not in fair.strong() and fair.rates["colour"] < 5 * fair.chance
    assert "among 128" in fair.text() and "x chance" in fair.text()


# ----------------------------------------------------------------------------- the manifest's recipe

def test_the_demo_records_its_recipe_and_train_uses_it_by_default(clvr, digits, tmp_path):
    for manifest in (digits / "manifest.json", digits / "train" / "manifest.json", digits / "val" / "manifest.json"):
        rec = json.loads(manifest.read_text())["recommended"]
        assert rec["recipe"] == DIGITS_RECIPE and "clvr shard demo digits" in rec["source"]
    r = clvr("train", "--method", "simclr", "--data", digits / "train", "--out", tmp_path / "run", *TINY)
    assert r.code == 0, r.err
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["data"]["recipe"] == "recommended" and config["data"]["size"] == 0
    assert "views: the shard set's recommended recipe" in r.err and "clvr shard demo digits" in r.err
    assert "16 px views (recipe recommended)" in r.err
    check = json.loads((tmp_path / "run" / "view_check.json").read_text())
    assert check["pairs"] == 48 and set(check["rates"]) == {"colour", "thumbnail"} and check["strong"] == []
    # the plan says that nothing will show whether it learns, and how to see it
    assert "monitor     none: without --val nothing will show whether this run learns" in r.err
    assert "--val VAL_SHARDS" in r.err


def test_a_recipe_chosen_by_the_user_wins_and_its_shortcut_is_warned_about(clvr, digits, tmp_path):
    r = clvr("train", "--method", "simclr", "--data", digits / "train", "--out", tmp_path / "run", *TINY,
             "--set", "data.recipe=simclr-cifar", "--set", "data.size=32", "--val", digits / "val")
    assert r.code == 0, r.err
    assert "recommended" not in r.err
    check = json.loads((tmp_path / "run" / "view_check.json").read_text())
    assert "colour" in check["strong"]
    assert "WARNING: the views keep a colour shortcut" in r.err and "(data.recipe simclr-cifar)" in r.err
    assert "monitor     kNN (k=200) of" in r.err


def test_clvr_shard_recipe_records_a_file_and_refuses_a_bad_one(clvr, image_folder, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"base": "simclr-cifar", "size": 24, "flip": {"p": 0.0}}))
    r = clvr("shard", "images", image_folder, tmp_path / "out", "--recipe", good, "--no-progress", "--workers", "1")
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "out" / "manifest.json").read_text())["recommended"]
    assert rec == {"recipe": {"base": "simclr-cifar", "size": 24, "flip": {"p": 0.0}}, "source": f"--recipe {good}"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "simclr-cifar", "crpo": {"scale": [0.2, 1.0]}}))
    r = clvr("shard", "images", image_folder, tmp_path / "out2", "--recipe", bad, "--no-progress")
    assert r.code == 2 and str(bad) in r.err and "crpo" in r.err and "crop" in r.err
    assert "Traceback" not in r.err and not (tmp_path / "out2").exists()
    for text, says in (("- 1\n- 2\n", "a mapping"), ("a: [1,\n", "not valid YAML")):
        bad.write_text(text)
        r = clvr("shard", "images", image_folder, tmp_path / "out3", "--recipe", bad, "--no-progress")
        assert r.code == 2 and says in r.err and str(bad) in r.err
    r = clvr("shard", "images", image_folder, tmp_path / "out3", "--recipe", tmp_path / "none.yaml", "--no-progress")
    assert r.code == 2 and "no such file" in r.err


def test_data_recipe_recommended_on_a_set_without_one_is_an_error_naming_it(clvr, image_folder, tmp_path):
    assert clvr("shard", "images", image_folder, tmp_path / "out", "--no-progress", "--workers", "1").code == 0
    r = clvr("train", "--method", "simclr", "--data", tmp_path / "out", "--out", tmp_path / "run", *TINY,
             "--set", "data.recipe=recommended")
    assert r.code != 0 and "has no recommended recipe in its manifest" in r.err and "--recipe FILE" in r.err
    assert "Traceback" not in r.err


def test_foreign_shards_can_carry_a_recipe_too(clvr, tmp_path):
    """clvr shard index (tars written by other tools) records --recipe, and train uses it."""
    import io

    import webdataset as wds
    from PIL import Image
    src = tmp_path / "foreign"
    src.mkdir()
    with wds.ShardWriter(str(src / "part-%03d.tar"), maxcount=20, verbose=0) as sink:
        for i in range(24):
            buf = io.BytesIO()
            Image.new("RGB", (20, 20), (10 * i, 255 - 10 * i, 40)).save(buf, format="PNG")
            sink.write({"__key__": f"sample{i:03d}", "png": buf.getvalue(), "cls": str(i % 3).encode()})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"base": "simclr-cifar", "size": 16, "flip": {"p": 0.0}}))
    r = clvr("shard", "index", src, "--recipe", recipe, "--no-progress")
    assert r.code == 0, r.err
    rec = json.loads((src / "manifest.json").read_text())["recommended"]
    assert rec["recipe"]["size"] == 16 and rec["source"] == f"--recipe {recipe}"
    r = clvr("train", "--method", "simclr", "--data", src, "--out", tmp_path / "run", *TINY)
    assert r.code == 0, r.err
    assert "views: the shard set's recommended recipe" in r.err and "16 px views (recipe recommended)" in r.err

"""Issue 13: ``clvr train`` fits the data it is given, and reads WebDataset sets that clvr did
not write. The plan block and its time estimate; the small-image default from the manifest's
image sizes; ``clvr shard index`` on tars written by ``webdataset.ShardWriter`` in the test,
then training and evaluation on them; and the bad inputs, each named."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import edit_json, make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = ["--set", "model.backbone=tiny", "--set", "data.batch_size=8", "--set", "progress=false"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("byod") / "d", limit=40) / "train"     # 32 samples, 32 px


def write_foreign(out: Path, n: int = 30, side: int = 20, orphan: bool = True, unknown: bool = True,
                  labels: bool = True, maxcount: int = 12) -> list[int]:
    """Tars as other tools write them: KEY.jpg + KEY.cls + KEY.txt, no index, no manifest; one
    sample without an image and one member of an unknown extension. Returns the labels."""
    import webdataset as wds
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ys = []
    with wds.ShardWriter(str(out / "part-%04d.tar"), maxcount=maxcount, verbose=0) as w:
        for i in range(n):
            y = int(rng.integers(0, 3)) * 2          # class ids 0, 2, 4: not contiguous
            ys.append(y)
            colour = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]][y // 2], np.uint8)
            im = np.clip(colour + rng.integers(-20, 20, (side, side, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG")
            sample = {"__key__": f"img{i:04d}", "jpg": buf.getvalue(), "txt": f"a picture of {y}"}
            if labels:
                sample["cls"] = y
            if unknown and i == 3:
                sample["exr"] = b"not read"
            w.write(sample)
            if orphan and i == 4:
                w.write({"__key__": "orphan", "txt": "a caption without its image"})
    return ys


# -- image sizes in the manifest ------------------------------------------------------------

def test_sharding_counts_each_image_in_the_bucket_of_its_longest_side(digits):
    from clvr.shards.sizes import bucket
    manifest = json.loads((digits / "manifest.json").read_text())
    assert manifest["stats"] == {"image_side:32": manifest["totals"]["samples"]}
    assert [bucket(16, 3), bucket(17, 8), bucket(640, 480), bucket(1024, 1024), bucket(1025, 2)] == \
        ["image_side:16", "image_side:32", "image_side:1024", "image_side:1024", "image_side:>1024"]


def test_a_size_summary_says_small_mixed_and_median():
    from clvr.shards.sizes import from_stats
    small = from_stats({"image_side:16": 49, "image_side:32": 46, "image_side:256": 5, "codec:vp9": 3})
    assert small.total == 100 and small.small and not small.mixed and small.median_side == 32
    mixed = from_stats({"image_side:32": 60, "image_side:512": 40})
    assert mixed.mixed and not mixed.small and mixed.share_at_most(64) == pytest.approx(0.6)
    large = from_stats({"image_side:512": 10, "image_side:>1024": 1})
    assert not large.small and not large.mixed and large.median_side == 512
    assert from_stats({"codec:vp9": 1}) is None


# -- settings that fit the data -------------------------------------------------------------

def test_small_images_get_the_small_image_settings_and_the_plan_says_why(digits, tmp_path):
    import shutil

    from clvr.methods import train_config as cfg
    # a set without a recommended recipe: simclr-cifar at the images' size
    plain = tmp_path / "plain"
    shutil.copytree(digits, plain)
    edit_json(plain / "manifest.json", lambda m: m.pop("recommended"))
    config, why = cfg.build_for_data("simclr", None, [], plain)
    assert config.model["backbone"] == "resnet18" and config.model["stem"] == "cifar"
    assert config.data.recipe == "simclr-cifar" and config.data.size == 32 and config.data.batch_size == 64
    assert config.optim.name == "sgd" and config.epochs == 60
    assert why.startswith("small-image settings") and "32 px" in why and "manifest stats" in why
    assert "--set preset=paper" in why
    # the user's own settings still win over the chosen ones
    config, _ = cfg.build_for_data("simclr", None, ["model.backbone=resnet50", "epochs=3"], plain)
    assert config.model["backbone"] == "resnet50" and config.epochs == 3 and config.data.size == 32
    # the demo's set carries its recipe (issue 22): the same settings with the data's own views
    config, why = cfg.build_for_data("simclr", None, [], digits)
    assert config.data.recipe == "recommended" and config.data.size == 0 and config.epochs == 60
    assert "views: the shard set's recommended recipe" in why and "clvr shard demo digits" in why
    config, _ = cfg.build_for_data("simclr", None, ["data.size=24"], digits)
    assert config.data.recipe == "recommended" and config.data.size == 24       # resized, still the data's
    config, _ = cfg.build_for_data("simclr", None, ["data.recipe=simclr"], digits)
    assert config.data.recipe == "simclr" and config.data.size == 32            # a chosen recipe wins


def test_the_papers_settings_stay_one_set_away(digits):
    from clvr.methods import train_config as cfg
    config, why = cfg.build_for_data("simclr", None, ["preset=paper"], digits)
    assert config.optim.name == "lars" and config.data.batch_size == 256 and config.data.size == 0
    assert config.model == {} and why == "the paper's settings (preset = paper)"


def test_without_a_manifest_or_with_mixed_sizes_the_papers_settings_are_kept(digits, tmp_path):
    from clvr.methods import train_config as cfg
    tar = next(digits.glob("*.tar"))
    config, why = cfg.build_for_data("simclr", None, [], str(tar))
    assert config.optim.name == "lars" and "no manifest to read image sizes from" in why
    mixed = tmp_path / "mixed"
    shutil.copytree(digits, mixed)
    manifest = json.loads((mixed / "manifest.json").read_text())
    manifest["stats"] = {"image_side:32": 20, "image_side:512": 12}
    manifest.pop("recommended")                 # the sizes alone decide here (the recipe: test above)
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    config, why = cfg.build_for_data("simclr", None, [], mixed)
    assert config.optim.name == "lars"
    assert "WARNING: the images mix small and large sizes" in why and str(mixed / "manifest.json") in why
    assert "--set preset=small" in why
    config, why = cfg.build_for_data("simclr", None, ["preset=small"], mixed)
    assert config.data.recipe == "simclr-cifar" and "preset = small" in why


def test_preset_is_checked_by_name():
    from clvr.methods import train_config as cfg
    with pytest.raises(cfg.ConfigError, match="config preset = 'smal'; choose one of auto, paper, small"):
        cfg.build("simclr", sets=["preset=smal"])


# -- the plan and the estimate --------------------------------------------------------------

def test_train_prints_the_plan_and_an_estimate_before_the_first_step(clvr, digits, tmp_path):
    r = clvr("train", "--method", "simclr", "--data", digits, "--out", tmp_path / "run", *TINY,
             "--set", "max_steps=6")
    assert r.code == 0, r.err
    err = r.err
    plan = err[err.index("clvr train: plan"):]
    for field in ("method      simclr (two_view views: view0, view1)", "backbone    tiny",
                  "images      16 px views (recipe recommended)",
                  "settings    small-image settings", "data        32 samples in",
                  "4 steps per epoch x 60 epochs = 6 steps", "batch       8 per process x 1 process = 8",
                  "device      cpu,", "views       a view's partner among 32 found by trivial features: colour",
                  "monitor     none: without --val nothing will show whether this run learns"):
        assert field in plan, field
    assert err.index("building the DALI pipeline") < err.index("clvr train: plan")
    predicted = err.index("clvr train: estimate (")
    assert "GFLOP per step at this machine's measured speed" in err[predicted:]
    measured = err.index("estimate (measured on steps 2 to 4)")
    assert err.index("clvr train: plan") < predicted < measured < err.index("done: 6/6 steps")


def test_a_run_slower_than_slow_epoch_hours_is_warned_about_before_its_first_step(clvr, digits, tmp_path):
    r = clvr("train", "--method", "simclr", "--data", digits, "--out", tmp_path / "run", *TINY,
             "--set", "max_steps=2", "--set", "slow_epoch_hours=1e-9", "--set", "preset=paper",
             "--set", "data.recipe=simclr-cifar")
    assert r.code == 0, r.err
    warning = r.err.index("clvr train: WARNING: at this estimate one epoch takes")
    assert warning < r.err.index("done: 2/2 steps")
    assert "slow_epoch_hours = 1e-09" in r.err and "slow_epoch_hours=0 to silence" in r.err
    quiet = clvr("train", "--method", "simclr", "--data", digits, "--out", tmp_path / "quiet", *TINY,
                 "--set", "max_steps=2", "--set", "slow_epoch_hours=0")
    assert quiet.code == 0 and "WARNING" not in quiet.err


def test_slow_warning_and_durations():
    from clvr.methods.plan import duration, slow_warning
    assert slow_warning(1.0, 3600, 1.0, []) is None                   # exactly an hour
    text = slow_warning(1.0, 3601 * 3, 1.0, ["hint."])
    assert "one epoch takes 3.0 h" in text and "hint." in text
    assert slow_warning(100.0, 10 ** 6, 0, []) is None
    assert [duration(5), duration(42), duration(300), duration(7200), duration(4 * 86400)] == \
        ["5 s", "42 s", "5.0 min", "2.0 h", "4.0 days"]


def test_encoder_flops_match_the_convolution_formula():
    """Forward FLOPs of a known network on a batch of views, against 2 x MACs written out in
    float64: a 3x3 convolution (3 -> 8 channels, padding 1) and a linear layer 8 -> 5."""
    from clvr.methods.plan import encoder_flops
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 5, bias=False))
    views = [torch.zeros(4, 3, 10, 12), torch.zeros(4, 9, 3, 6, 6)]       # an image view and 9 patches
    conv = lambda h, w: 2.0 * 3 * 8 * 9 * h * w                           # noqa: E731
    fc = 2.0 * 8 * 5
    expected = 4 * (conv(10, 12) + fc) + 4 * 9 * (conv(6, 6) + fc)
    assert encoder_flops(net, views, "image") == pytest.approx(expected, rel=1e-12)
    assert net.training                                                   # left as it was


# -- foreign WebDataset shards --------------------------------------------------------------

def test_shard_index_makes_foreign_tars_readable_without_rewriting_them(clvr, tmp_path):
    from clvr.pipeline import ViewLoader
    from clvr.shards.dali_index import format_index, index_tar
    src = tmp_path / "wds"
    ys = write_foreign(src)
    before = {p.name: p.read_bytes() for p in src.glob("*.tar")}
    r = clvr("shard", "index", src, "--no-progress")
    assert r.code == 0, r.err
    assert "indexed 30 samples in 3 shard(s)" in r.out and "3 classes (ids 0, 2, 4 of 5), labels from the .cls members" in r.out
    assert "skipped 1 sample(s) without an image or video: part-0000.tar:orphan" in r.out
    assert "unknown extensions (kept, never read): .exr (1)" in r.out
    assert {p.name: p.read_bytes() for p in src.glob("*.tar")} == before          # tars untouched
    manifest = json.loads((src / "manifest.json").read_text())
    assert manifest["kind"] == "foreign" and manifest["index_from"] == "order" and manifest["tar_dir"] == "."
    # integer labels keep their value as the class id (0, 2, 4 of 5): the same in every set
    assert manifest["classes"]["names"] == ["0", "1", "2", "3", "4"] and manifest["skipped"]["count"] == 1
    assert manifest["label_source"] == "cls" and manifest["unlabelled"]["count"] == 0
    assert manifest["stats"] == {"image_side:32": 30} and manifest["totals"]["samples"] == 30
    info = clvr("shard", "info", src)
    assert info.code == 0 and "skipped 1 sample(s) without an image or video: part-0000.tar:orphan" in info.out
    assert f"command: clvr shard index {src} --no-progress" in info.out and ".exr (1)" in info.out
    assert [s["first_index"] for s in manifest["shards"]] == [0, 11, 23]     # the orphan took a place in the first tar
    # each index file is what wds2idx would list for the tar, less the sample without an image
    first = src / "part-0000.tar"
    expected = [c for c in index_tar(first) if not c[0].name.startswith("orphan.")]
    assert (src / "part-0000.idx").read_text() == format_index(expected)
    # read: the global index is the manifest's order, the labels the writer's .cls
    loader = ViewLoader(src, "two_view", recipe="simclr-cifar", batch_size=8, shuffle=True, last_batch="pad")
    seen = {}
    for batch in loader:
        for i, y, ok in zip(batch.index.tolist(), batch.label.tolist(), batch.valid.tolist()):
            if ok:
                seen[i] = y
    loader.close()
    assert sorted(seen) == list(range(30))
    assert [seen[i] for i in range(30)] == ys


def test_foreign_shards_train_and_evaluate_from_a_side_folder(clvr, tmp_path):
    src, val = tmp_path / "wds", tmp_path / "wds-val"
    write_foreign(src, n=32)
    write_foreign(val, n=12, orphan=False, unknown=False)
    side = tmp_path / "side"
    assert clvr("shard", "index", src, "--out", side, "--no-progress").code == 0
    assert clvr("shard", "index", val, "--no-progress").code == 0
    assert not (src / "manifest.json").exists() and not list(src.glob("*.idx"))   # nothing beside the tars
    assert json.loads((side / "manifest.json").read_text())["tar_dir"] == "../wds"
    run = tmp_path / "run"
    # InstDisc keys its memory bank on the global index
    r = clvr("train", "--method", "instdisc", "--data", side, "--val", val, "--out", run, *TINY,
             "--set", "max_steps=2", "--set", "model.negatives=16")
    assert r.code == 0, r.err
    assert "done: 2/2 steps" in r.err
    knn = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "knn_top1" in x]
    assert knn and 0 <= knn[-1]["knn_top1"] <= 1
    e = clvr("eval", "knn", run, "--train", side, "--val", val, "--out", tmp_path / "eval", "--no-plots",
             "--no-baselines")
    assert e.code == 0, e.err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["encoder"]["method"] == "instdisc"


def test_shard_index_refuses_bad_foreign_input_by_name(clvr, tmp_path):
    import webdataset as wds
    # a .cls that is not text, a negative id other than -1, and a .json label that is no id or name
    bad = tmp_path / "badcls"
    bad.mkdir()
    with wds.TarWriter(str(bad / "x.tar")) as w:
        w.write({"__key__": "a", "jpg": _jpeg(), "cls": b"\xff\xfe"})
    r = clvr("shard", "index", bad, "--no-progress")
    assert r.code == 2 and f"{bad / 'x.tar'}: key a: .cls: the label is not UTF-8 text" in r.err
    for name, sample, flags, message in (
            ("negative", {"cls": b"-3"}, [], "key a: label -3 is not a class id"),
            ("jsonlist", {"json": b'{"label": [1, 2]}'}, [], "key a: the .json field 'label' is [1, 2], not a class"),
            ("badjson", {"json": b'{"label": '}, ["--label-key", "json:label"], "key a.json: not valid JSON"),
            ("nofield", {"json": b'{"x": 1}'}, ["--label-key", "label"], "--label-key label: no sample has a .label")):
        (tmp_path / name).mkdir()
        with wds.TarWriter(str(tmp_path / name / "x.tar")) as w:
            w.write({"__key__": "a", "jpg": _jpeg(), **sample})
        r = clvr("shard", "index", tmp_path / name, "--no-progress", *flags)
        assert r.code == 2 and message in r.err, (name, r.err)
    # no image at all
    none = tmp_path / "none"
    none.mkdir()
    with wds.TarWriter(str(none / "y.tar")) as w:
        w.write({"__key__": "b", "txt": "only words"})
    r = clvr("shard", "index", none, "--no-progress")
    assert r.code == 2 and "no sample with an image or video in 1 tar(s)" in r.err
    # a folder without tars, a file that is no tar, and a clvr shard set that is not the indexer's
    (tmp_path / "empty").mkdir()
    r = clvr("shard", "index", tmp_path / "empty", "--no-progress")
    assert r.code == 2 and f"{tmp_path / 'empty'}: no .tar files to index" in r.err
    (tmp_path / "notes.txt").write_text("x")
    r = clvr("shard", "index", tmp_path / "notes.txt", tmp_path / "badcls" / "x.tar", "--no-progress")
    assert r.code == 2 and "notes.txt: not a .tar file" in r.err
    digits = make_demo(tmp_path / "d", limit=20)
    r = clvr("shard", "index", digits / "train", "--no-progress")
    assert r.code == 2 and "already the manifest of a shard set (kind 'demo:digits')" in r.err


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_an_index_that_does_not_match_its_tar_is_named(clvr, tmp_path):
    from clvr.pipeline import ViewLoader
    from clvr.pipeline.errors import PipelineError
    src = tmp_path / "wds"
    write_foreign(src, n=24, orphan=False, unknown=False)
    assert clvr("shard", "index", src, "--no-progress").code == 0
    a, b = src / "part-0000.tar", src / "part-0001.tar"
    # the tar changed after it was indexed
    a.write_bytes(a.read_bytes() + b"\0" * 512)
    with pytest.raises(PipelineError, match=r"part-0000.tar: .* bytes, but .*manifest.json lists .* the tar "
                                            r"changed after it was indexed"):
        ViewLoader(src, "two_view", recipe="simclr-cifar", batch_size=4)
    assert clvr("shard", "index", src, "--no-progress").code == 0
    # an index file made for another tar of the same size
    shutil.copyfile(src / "part-0001.idx", src / "part-0000.idx")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["shards"][0]["bytes"] = a.stat().st_size
    (src / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PipelineError, match=r"part-0000.idx: does not match .*part-0000.tar: the index puts key "
                                            r"img0012 .* but the tar has img0000.cls there"):
        ViewLoader(src, "two_view", recipe="simclr-cifar", batch_size=4)


def test_val_shards_without_labels_are_refused_by_name(clvr, digits, tmp_path):
    val = tmp_path / "unlabelled"
    write_foreign(val, n=8, labels=False, orphan=False, unknown=False)
    assert clvr("shard", "index", val, "--no-progress").code == 0
    r = clvr("train", "--method", "simclr", "--data", digits, "--val", val, "--out", tmp_path / "run", *TINY,
             "--set", "max_steps=1")
    assert r.code == 2 and f"--val {val}: the shard set has no labels" in r.err

"""``clvr views list`` and ``clvr views preview``: every built-in generator's sheet, its layout,
and that each view region holds the de-normalised pixels the loader gives for the same seed."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BUILTINS = ("two_view", "multi_crop", "cpc_grid", "jigsaw", "object_crops", "video_clips", "image_text")
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demos")
    limits = {"digits": 30, "digits-objects": 16, "digits-video": 10, "digits-captions": 16}
    return {d: make_demo(root / d, d, n) / "train" for d, n in limits.items()}


def run_preview(clvr, out: Path, data: Path, views: str, *extra) -> tuple:
    r = clvr("views", "preview", "--data", data, "--views", views, "--out", out, *extra)
    assert r.code == 0, r
    assert out.is_file() and f"wrote {out}" in r.out
    from clvr.pipeline.preview import read_layout
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB")).copy()
    return pixels, read_layout(out)


def loader_batch(data, views, samples, seed, recipe="simclr-cifar", **options):
    """The batch the preview must show: a loader built as the command builds it."""
    from clvr.pipeline import ViewLoader
    ld = ViewLoader(data, views, recipe=recipe, batch_size=samples, seed=seed, shuffle=True,
                    last_batch="partial", view_options=options or None)
    try:
        return next(iter(ld))
    finally:
        ld.close()


def denormalised(t) -> np.ndarray:
    """(3, H, W) normalised float -> (H, W, 3) uint8, computed here independently of the module."""
    a = t.float().numpy().transpose(1, 2, 0) * STD + MEAN
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def tensor_for(batch, b: int, view: str):
    """The tensor a region named ``name`` or ``name[i,j,..]`` shows for sample ``b``."""
    m = re.fullmatch(r"(\w+)(?:\[([\d,]+)\])?", view)
    t = batch[m.group(1)][b]
    for i in (m.group(2).split(",") if m.group(2) else []):
        t = t[int(i)]
    return t


def region(pixels, r, zoom):
    x0, y0, x1, y1 = r["box"]
    return pixels[y0:y1:zoom, x0:x1:zoom]


def assert_regions_match(pixels, layout, batch, skip=("source",)):
    """Every view region equals the de-normalised loader tensor (zoomed by the layout's zoom)."""
    zoom, checked = layout["zoom"], 0
    for r in layout["regions"]:
        if r["view"] in skip:
            continue
        assert r["index"] == int(batch.index[r["sample"]])
        want = denormalised(tensor_for(batch, r["sample"], r["view"]))
        got = region(pixels, r, zoom)
        assert got.shape == want.shape, (r, got.shape, want.shape)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, r
        checked += 1
    assert checked > 0
    return checked


def regions(layout, sample=None, prefix=""):
    return [r for r in layout["regions"] if (sample is None or r["sample"] == sample)
            and r["view"].startswith(prefix)]


def size(r):
    x0, y0, x1, y1 = r["box"]
    return x1 - x0, y1 - y0


# ----------------------------------------------------------------------------- list


def test_views_list_names_every_builtin_with_options_and_recipes(clvr):
    r = clvr("views", "list")
    assert r.code == 0, r
    headings = set(re.findall(r"^(\w+):", r.out, re.M))
    assert set(BUILTINS) <= headings
    assert "local_size=96" in r.out and "frames=8" in r.out and "objects=4" in r.out   # option defaults
    assert "cpc-v2 (default)" in r.out and "pirl (default)" in r.out                    # default recipes
    assert "(B, G, G, 3, P, P)" in r.out                                                # output structure
    for name in ("simclr", "simclr-cifar", "byol", "cpc-v2", "none"):
        assert re.search(rf"^  {re.escape(name)} ", r.out, re.M), name


def test_the_views_parser_module_imports_only_the_standard_library_at_load():
    # clvr.cli adds this parser for `clvr views ...`; torch, DALI and the generators load in run().
    import ast

    from conftest import REPO
    tree = ast.parse((REPO / "pipeline" / "cli.py").read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            top.add("." * node.level + (node.module or "").split(".")[0])
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top


def test_top_level_help_lists_views(clvr):
    r = clvr("--help")
    assert r.code == 0 and re.search(r"^\s+views\s", r.out, re.M)


# ----------------------------------------------------------------------------- generators


def test_two_view_regions_are_the_loaders_views(clvr, sets, tmp_path):
    pixels, layout = run_preview(clvr, tmp_path / "a.png", sets["digits"], "two_view", "--recipe", "simclr-cifar",
                                 "--samples", "3", "--seed", "3")
    assert layout["generator"] == "two_view" and layout["samples"] == 3 and layout["zoom"] == 3
    assert pixels.shape[:2] == Image.open(tmp_path / "a.png").size[::-1]
    assert [r["view"] for r in regions(layout, 0)] == ["view0", "view1"]
    assert all(size(r) == (96, 96) for r in layout["regions"])
    batch = loader_batch(sets["digits"], "two_view", 3, seed=3)
    assert assert_regions_match(pixels, layout, batch) == 6
    # the views are not blank, and the two views of a sample differ (independent augmentation)
    a, b = (region(pixels, r, 3) for r in regions(layout, 0))
    assert a.std() > 5 and not np.array_equal(a, b)
    # a different seed shows different samples or views
    _, other = run_preview(clvr, tmp_path / "b.png", sets["digits"], "two_view", "--recipe", "simclr-cifar",
                           "--samples", "3", "--seed", "4")
    assert [r["index"] for r in other["regions"]] != [r["index"] for r in layout["regions"]] or \
        not np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), pixels)


def test_sheet_grows_with_views_and_samples(clvr, sets, tmp_path):
    from clvr.pipeline.preview import read_layout

    def dims(*extra):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        r = clvr("views", "preview", "--data", sets["digits"], "--views", "two_view", "--recipe", "simclr-cifar",
                 "--zoom", "8", "--out", out, *extra)
        assert r.code == 0, r
        return Image.open(out).size, read_layout(out)

    (w2, h2), two = dims("--samples", "2")
    (w3, h3), three = dims("--samples", "2", "--set-view", "views=3")
    x = [r["box"][0] for r in regions(three, 0)]
    assert len(x) == 3 and w3 - w2 == x[2] - x[1] > 32 * 8 and h3 == h2   # one more view: one more tile
    assert all(size(r) == (256, 256) for r in three["regions"])
    (w, h), _ = dims("--samples", "3")
    assert w == w2 and h - h2 > 32 * 8                                     # one more sample: one more row
    assert [r["box"] for r in regions(two, 1)] == [r["box"] for r in regions(three, 1)][:2]


def test_multi_crop_keeps_the_relative_size_of_local_crops(clvr, sets, tmp_path):
    pixels, layout = run_preview(clvr, tmp_path / "m.png", sets["digits"], "multi_crop", "--recipe", "simclr-cifar",
                                 "--samples", "2", "--seed", "1", "--set-view", "global_views=2",
                                 "--set-view", "local_views=3", "--set-view", "local_size=16")
    names = [r["view"] for r in regions(layout, 1)]
    assert names == ["global0", "global1", "local0", "local1", "local2"]
    g, loc = size(regions(layout, 0, "global")[0]), size(regions(layout, 0, "local")[0])
    assert g == (32 * layout["zoom"],) * 2 and loc == (16 * layout["zoom"],) * 2
    row = regions(layout, 0)
    assert all(a["box"][2] < b["box"][0] for a, b in zip(row, row[1:])), "views side by side"
    batch = loader_batch(sets["digits"], "multi_crop", 2, seed=1, global_views=2, local_views=3, local_size=16)
    assert assert_regions_match(pixels, layout, batch) == 10


def test_cpc_grid_patches_sit_in_their_grid_positions(clvr, sets, tmp_path):
    opts = {"side": 40, "grid": 3, "patch": 16, "stride": 12}
    extra = [a for k, v in opts.items() for a in ("--set-view", f"{k}={v}")]
    pixels, layout = run_preview(clvr, tmp_path / "c.png", sets["digits"], "cpc_grid", "--samples", "2",
                                 "--seed", "2", *extra)
    z = layout["zoom"]
    patches = {r["view"]: r["box"] for r in regions(layout, 0)}
    assert len(patches) == 9 and all(size({"box": b}) == (16 * z, 16 * z) for b in patches.values())
    for i in range(3):
        for j in range(3):
            x0, y0 = patches[f"patches[{i},{j}]"][:2]
            assert y0 == patches[f"patches[{i},0]"][1] and x0 == patches[f"patches[0,{j}]"][0]
            if j:
                assert x0 > patches[f"patches[{i},{j - 1}]"][2], "a gap between neighbouring patches"
            if i:
                assert y0 > patches[f"patches[{i - 1},{j}]"][3]
    # cpc_grid's patch augmentation draws from the loader's own generator: recompute with it
    batch = loader_batch(sets["digits"], "cpc_grid", 2, seed=2, recipe=None, **opts)
    assert assert_regions_match(pixels, layout, batch) == 18


def test_jigsaw_shows_the_image_and_nine_patches_in_3x3(clvr, sets, tmp_path):
    opts = {"side": 48, "patch": 12, "permutations": 10}
    extra = [a for k, v in opts.items() for a in ("--set-view", f"{k}={v}")]
    pixels, layout = run_preview(clvr, tmp_path / "j.png", sets["digits"], "jigsaw", "--recipe", "simclr-cifar",
                                 "--samples", "2", "--seed", "5", *extra)
    row = regions(layout, 0)
    assert row[0]["view"] == "image" and [r["view"] for r in row[1:]] == [f"patches[{k}]" for k in range(9)]
    xs = sorted({r["box"][0] for r in row[1:]})
    ys = sorted({r["box"][1] for r in row[1:]})
    assert len(xs) == 3 and len(ys) == 3 and xs[0] > row[0]["box"][2]
    batch = loader_batch(sets["digits"], "jigsaw", 2, seed=5, **opts)
    assert assert_regions_match(pixels, layout, batch) == 20


def test_object_crops_show_the_source_with_boxes_and_the_crops(clvr, sets, tmp_path):
    pixels, layout = run_preview(clvr, tmp_path / "o.png", sets["digits-objects"], "object_crops",
                                 "--recipe", "simclr-cifar", "--samples", "2", "--seed", "0",
                                 "--set-view", "objects=3", "--set-view", "size=24")
    z = layout["zoom"]
    row = regions(layout, 0)
    assert row[0]["view"] == "source" and size(row[0]) == (96 * z, 96 * z)     # the original 96 px canvas
    assert [r["view"] for r in row[1:]] == [f"objects[{k},{v}]" for k in range(3) for v in range(2)]
    assert all(size(r) == (24 * z, 24 * z) for r in row[1:])
    batch = loader_batch(sets["digits-objects"], "object_crops", 2, seed=0, objects=3, size=24)
    assert assert_regions_match(pixels, layout, batch) == 12
    # The source region is the sample's image from the shard (read here with webdataset) where
    # no box is drawn, and the box outlines are drawn on it.
    import webdataset as wds
    wanted = {r["index"]: r for r in layout["regions"] if r["view"] == "source"}
    seen = 0
    for s in wds.WebDataset(str(sorted(sets["digits-objects"].glob("*.tar"))[0]), shardshuffle=False,
                            empty_check=False):
        idx = int(np.frombuffer(s["index.i64"], "<i8")[0])
        if idx in wanted:
            import io
            raw = np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))
            shown = region(pixels, wanted[idx], z)
            same = (shown == raw).all(-1)
            assert 0.5 < same.mean() < 1.0, "the source image, with boxes drawn on it"
            seen += 1
    assert seen == 2


def test_masked_objects_are_greyed_and_crossed():
    import json

    import torch

    from clvr.pipeline.batch import ViewBatch
    from clvr.pipeline.preview import render
    from clvr.pipeline.recipe import build
    from clvr.pipeline.views.object_crops import ObjectCrops

    gen = ObjectCrops(objects=2, size=8)
    objs = torch.randn(1, 2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batch = ViewBatch(views=(objs,), names=("objects",), index=torch.tensor([7]), label=torch.tensor([-1]),
                      valid=torch.tensor([True]), kind="object_crops",
                      extras={"mask": torch.tensor([[True, False]]), "category": torch.tensor([[3, -1]]),
                              "parent": torch.tensor([[7, 7]]),
                              "box": torch.tensor([[[2.0, 2.0, 10.0, 10.0], [0.0, 0.0, 30.0, 30.0]]])},
                      boxes=[torch.tensor([[2.0, 2.0, 10.0, 10.0]])], box_classes=[torch.tensor([3])])
    source = np.full((30, 30, 3), 200, np.uint8)
    im = render(batch, gen, build("simclr", views=2), title="t", sources={7: source})
    layout = json.loads(im.info["clvr:layout"])
    pixels, z = np.asarray(im), layout["zoom"]
    by = {r["view"]: r for r in layout["regions"]}

    def red(r):
        x0, y0, x1, y1 = r["box"]
        px = pixels[y0:y1, x0:x1]
        return int(((px[..., 0] > 200) & (px[..., 1] < 40) & (px[..., 2] < 40)).sum())

    assert np.array_equal(region(pixels, by["objects[0,0]"], z), denormalised(objs[0, 0, 0]))
    assert not np.array_equal(region(pixels, by["objects[1,0]"], z), denormalised(objs[0, 1, 0])), "greyed"
    assert red(by["objects[1,0]"]) > 8 * z and red(by["objects[0,0]"]) < red(by["objects[1,0]"]) // 4, "crossed"
    assert size(by["source"]) == (30 * z, 30 * z)


def test_video_clips_are_frame_strips(clvr, sets, tmp_path):
    opts = {"clips": 2, "frames": 3, "stride": 2, "size": 16}
    extra = [a for k, v in opts.items() for a in ("--set-view", f"{k}={v}")]
    pixels, layout = run_preview(clvr, tmp_path / "v.png", sets["digits-video"], "video_clips",
                                 "--recipe", "simclr-cifar", "--samples", "2", "--seed", "1", *extra)
    z = layout["zoom"]
    row = {r["view"]: r["box"] for r in regions(layout, 1)}
    assert sorted(row) == [f"clips[{c},{f}]" for c in range(2) for f in range(3)]
    for c in range(2):
        assert len({row[f"clips[{c},{f}]"][1] for f in range(3)}) == 1, "a clip's frames share a row"
        assert row[f"clips[{c},0]"][2] < row[f"clips[{c},1]"][0] < row[f"clips[{c},2]"][0]
    assert row["clips[1,0]"][1] > row["clips[0,0]"][3], "the second clip's strip is under the first"
    assert all(size({"box": b}) == (16 * z, 16 * z) for b in row.values())
    batch = loader_batch(sets["digits-video"], "video_clips", 2, seed=1, **opts)
    assert assert_regions_match(pixels, layout, batch) == 12


def test_image_text_shows_the_caption_under_the_view(clvr, sets, tmp_path):
    pixels, layout = run_preview(clvr, tmp_path / "t.png", sets["digits-captions"], "image_text",
                                 "--recipe", "simclr-cifar", "--samples", "2", "--seed", "0")
    batch = loader_batch(sets["digits-captions"], "image_text", 2, seed=0)
    assert assert_regions_match(pixels, layout, batch) == 2
    first, second = (regions(layout, s)[0]["box"] for s in (0, 1))
    # under the view: its name line, then the caption's lines (dark text on white)
    band = pixels[first[3] + 16:second[1] - 6, first[0]:first[0] + 180]
    dark_rows = int(((band.min(-1) < 100).any(-1)).sum())
    assert dark_rows >= 8, "caption text under the view"
    assert batch.text[0] and all(isinstance(t, str) for t in batch.text)


def test_plug_in_generators_fall_back_to_every_image_tensor(clvr, sets, tmp_path):
    from nvidia.dali import fn

    from clvr.pipeline.views import register_view
    from clvr.pipeline.views.registry import _REGISTRY

    def pair(sample, ctx):
        a = ctx.view(sample.image, ctx.recipe(0), (16, 16))
        b = ctx.view(sample.image, ctx.recipe(0).replace(grayscale={"p": 1.0}), (16, 16))
        return {"views": [a, fn.stack(a, b)]}

    register_view("preview_test_pair", view_names=("color", "pair"))(pair)
    try:
        pixels, layout = run_preview(clvr, tmp_path / "p.png", sets["digits"], "preview_test_pair",
                                     "--recipe", "simclr-cifar", "--samples", "2")
        assert layout["layout"] == "generic"
        assert [r["view"] for r in regions(layout, 0)] == ["color", "pair[0]", "pair[1]"]
        assert np.array_equal(region(pixels, regions(layout, 0)[0], layout["zoom"]),
                              region(pixels, regions(layout, 0)[1], layout["zoom"]))
        gray = region(pixels, regions(layout, 0)[2], layout["zoom"]).astype(int)
        assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 2, "the grayscale view"
    finally:
        _REGISTRY.pop("preview_test_pair", None)


# ----------------------------------------------------------------------------- errors


def test_bad_views_name_exits_2_with_the_nearest_name(clvr, sets, tmp_path):
    r = clvr("views", "preview", "--data", sets["digits"], "--views", "two_veiw", "--out", tmp_path / "x.png")
    assert r.code == 2
    assert "did you mean 'two_view'" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_bad_recipe_key_and_option_exit_2(clvr, sets, tmp_path):
    yml = tmp_path / "r.yaml"
    yml.write_text("base: simclr-cifar\nblurr: {p: 0.5}\n")
    r = clvr("views", "preview", "--data", sets["digits"], "--views", "two_view", "--recipe", yml,
             "--out", tmp_path / "x.png")
    assert r.code == 2 and "did you mean 'blur'" in r.err and "Traceback" not in r.err
    r = clvr("views", "preview", "--data", sets["digits"], "--views", "two_view", "--set-view", "viewz=3",
             "--out", tmp_path / "x.png")
    assert r.code == 2 and "did you mean 'views'" in r.err


def test_a_bad_sample_stops_the_preview_or_is_skipped_and_counted(clvr, sets, tmp_path):
    from clvr.pipeline.source import read_index

    data = tmp_path / "bad"
    shutil.copytree(sets["digits"], data)
    tar = sorted(data.glob("*.tar"))[0]
    entry = read_index(str(tar.with_suffix(".idx")))[2]
    off, length = entry.components["png"]
    with open(tar, "r+b") as f:
        f.seek(off + 8)
        f.write(b"\x00" * (length - 8))
    common = ("views", "preview", "--data", data, "--views", "two_view", "--recipe", "simclr-cifar",
              "--samples", "24", "--zoom", "1")
    r = clvr(*common, "--out", tmp_path / "x.png")
    assert r.code == 2 and f"key {entry.key}" in r.err and "Traceback" not in r.err
    r = clvr(*common, "--on-error", "skip", "--out", tmp_path / "y.png")
    assert r.code == 0, r
    assert "skipped 1 bad sample(s)" in r.out and entry.key in r.err
    from clvr.pipeline.preview import read_layout
    assert int(entry.key) not in {x["index"] for x in read_layout(tmp_path / "y.png")["regions"]}

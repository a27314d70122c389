"""PatchGridPool: CPC's encoder read on the mean of its patch grid (issue 22), and its export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clvr.methods.backbones import backbone
from clvr.methods.export import _build, load_encoder
from clvr.methods.patch_grid import PatchGridPool, check_grid

GRID = {"side": 12, "grid": 3, "patch": 6, "stride": 3}


def test_the_pool_is_the_grid_of_normalised_patch_features_of_the_resized_image_or_their_mean():
    torch.manual_seed(0)
    net = backbone("tiny").double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    big = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False, antialias=True)
    cells = [[net(big[b:b + 1, :, 3 * i:3 * i + 6, 3 * j:3 * j + 6])[0] for i in range(3) for j in range(3)]
             for b in range(2)]
    grid = torch.stack([torch.cat([c / c.norm() for c in row]) for row in cells])     # row by row
    mean = torch.stack([torch.stack(row).mean(0) for row in cells])
    pool = PatchGridPool(net, **GRID).eval()
    assert pool.options["pool"] == "grid" and pool.num_features == 9 * net.num_features
    assert torch.allclose(pool(x), grid, atol=1e-12, rtol=0)
    # an image already at the side is not resized
    assert torch.allclose(pool(big), grid, atol=1e-12, rtol=0)
    averaged = PatchGridPool(net, **GRID, pool="mean").eval()
    assert averaged.num_features == net.num_features
    assert torch.allclose(averaged(x), mean, atol=1e-12, rtol=0)


def test_its_state_dict_is_the_backbones_under_the_backbones_names():
    net = backbone("tiny")
    pool = PatchGridPool(net, **GRID)
    assert list(pool.state_dict()) == list(net.state_dict())
    other = backbone("tiny")
    PatchGridPool(other, **GRID).load_state_dict(net.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))


def test_bad_grids_are_refused_by_name():
    with pytest.raises(ValueError, match="spans 15 px, more than side = 12"):
        check_grid({**GRID, "patch": 9})
    with pytest.raises(ValueError, match="must give side, grid, patch, stride"):
        check_grid({"side": 12})
    with pytest.raises(ValueError, match="pool = 'max'; choose grid or mean"):
        check_grid({**GRID, "pool": "max"})
    with pytest.raises(ValueError, match="positive integers"):
        check_grid({**GRID, "stride": 0})


def test_an_exported_encoder_with_a_patch_grid_is_rebuilt_pooled(tmp_path):
    import json

    from safetensors.torch import save_file
    net = backbone("tiny").eval()
    arch = {"kind": "image", "name": "tiny", "options": {}, "num_features": 9 * net.num_features, "patch_grid": GRID}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "e.safetensors"))
    (tmp_path / "e.json").write_text(json.dumps({"format": "clvr-encoder", "format_version": 1, "weights": "e.safetensors",
                                                 "architecture": arch, "input": {}}))
    model = load_encoder(tmp_path / "e.safetensors")
    assert isinstance(model, PatchGridPool)
    x = torch.rand(2, 3, 12, 12)
    assert torch.allclose(model(x), PatchGridPool(net, **GRID)(x), atol=1e-6)
    assert isinstance(_build(arch, "here"), PatchGridPool)
    # a sidecar with a broken grid is refused, naming it
    (tmp_path / "e.json").write_text(json.dumps({"format": "clvr-encoder", "format_version": 1,
                                                 "architecture": {**arch, "patch_grid": {"side": 4}}, "input": {}}))
    from clvr.methods.export import EncoderFileError
    with pytest.raises(EncoderFileError, match="e.json: architecture patch_grid must give"):
        load_encoder(tmp_path / "e.safetensors")


def test_a_cpc_run_exports_its_patch_grid_and_the_knn_monitor_reads_it(tmp_path, clvr, monkeypatch):
    import json

    from clvr.methods import features as features_mod
    from conftest import make_demo
    data = make_demo(tmp_path / "d", limit=60)
    read = []                                      # what the kNN monitor extracts features with
    extract = features_mod.extract_features

    def recording(encoder, loader):
        read.append(encoder)
        return extract(encoder, loader)
    monkeypatch.setattr(features_mod, "extract_features", recording)
    r = clvr("train", "--method", "cpc_v2", "--data", data / "train", "--val", data / "val", "--out", tmp_path / "run",
             "--set", "model.backbone=tiny", "--set", "data.batch_size=8", "--set", "progress=false",
             "--set", "tensorboard=false", "--set", "max_steps=2", "--set", "knn_k=5")
    assert r.code == 0, r.err
    assert clvr("export", tmp_path / "run", "--out", tmp_path / "cpc.safetensors").code == 0
    arch = json.loads((tmp_path / "cpc.json").read_text())["architecture"]
    # the small-image preset's grid: 4 x 4 patches of 8 px at stride 8 of the 32-px image
    assert arch["patch_grid"] == {"side": 32, "grid": 4, "patch": 8, "stride": 8, "pool": "grid"}
    model = load_encoder(tmp_path / "cpc.safetensors")
    assert isinstance(model, PatchGridPool) and arch["num_features"] == model.num_features == 16 * model.backbone.num_features
    # a grid whose first predicted row overlaps the context is refused before anything is built
    r = clvr("train", "--method", "cpc_v2", "--data", data / "train", "--out", tmp_path / "run2",
             "--set", "model.backbone=tiny", "--set", "data.batch_size=8", "--set", "progress=false",
             "--set", "data.view_options={side: 32, grid: 3, patch: 16, stride: 8}")
    assert r.code == 2 and "set model.skip to at least 1" in r.err and "Traceback" not in r.err
    knn = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "knn_top1" in x]
    assert knn and 0 <= knn[-1]["knn_top1"] <= 1
    assert read and all(isinstance(e, PatchGridPool) and e.options == arch["patch_grid"] for e in read)

"""Exported encoders: plain torch + safetensors read the weights; load_encoder rebuilds the trained
backbone exactly (BatchNorm statistics included); bad checkpoints and files are clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch

import clvr
from clvr.methods import get_method
from clvr.methods.checkpoint import CheckpointError, save_checkpoint
from clvr.methods.export import EncoderFileError, describe, export_encoder, load_encoder
from clvr.pipeline.batch import ViewBatch

IMAGE_INPUT = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "size": 16, "layout": "B,3,H,W"}
VIDEO_INPUT = dict(IMAGE_INPUT, layout="B,T,3,H,W", frames=2)
CASES = {
    "image": ("simclr", {"backbone": "tiny", "hidden": 16, "dim": 8},
              {"kind": "image", "name": "tiny", "options": {"stem": "imagenet", "norm": "batch"}}, IMAGE_INPUT),
    "video": ("video_simclr", {"backbone": "r2plus1d_tiny", "hidden": 16, "dim": 8},
              {"kind": "video", "name": "r2plus1d_tiny", "options": {"norm": "batch"}}, VIDEO_INPUT),
}


def sample(kind: str, b: int = 4) -> torch.Tensor:
    return torch.randn(b, 3, 16, 16) if kind == "image" else torch.randn(b, 2, 3, 16, 16)


def trained(kind: str):
    """A method after one optimiser step (so BatchNorm running statistics are not the defaults)."""
    torch.manual_seed(0)
    method, config, _, _ = CASES[kind]
    m = get_method(method)(config)
    if kind == "image":
        views, names = (sample(kind) * 2 + 1, sample(kind) * 2 + 1), ("view0", "view1")
    else:
        views, names = (torch.randn(4, 2, 2, 3, 16, 16) * 2 + 1,), ("clips",)
    batch = ViewBatch(views=views, names=names, index=torch.arange(4), label=torch.zeros(4, dtype=torch.long),
                      valid=torch.ones(4, dtype=torch.bool), kind="two_view" if kind == "image" else "video_clips")
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(batch).loss.backward()
    opt.step()
    return m


def checkpoint_dict(m, kind: str, step: int = 12) -> dict:
    method, _, architecture, feed = CASES[kind]
    arch = dict(architecture, num_features=m.encoder.num_features)
    return {"step": step, "method": method, "model": m.state_dict(),
            "encoder": {"prefix": "online.backbone.", "architecture": arch, "input": feed}}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """For each kind: (trained method, run directory, weights, sidecar)."""
    out = {}
    for kind in CASES:
        run = tmp_path_factory.mktemp(f"run-{kind}")
        m = trained(kind)
        save_checkpoint(run, 12, checkpoint_dict(m, kind))
        out[kind] = (m, run, *export_encoder(run, run / "export" / "encoder.safetensors"))
    return out


@pytest.fixture(params=list(CASES))
def exported(request, exports):
    return (request.param, *exports[request.param])


def test_plain_torch_and_safetensors_read_the_weights_without_clvr(exports, tmp_path):
    files = {kind: str(e[2]) for kind, e in exports.items()}
    code = (
        "import json, sys\n"
        "from safetensors.torch import load_file\n"
        f"states = {{kind: load_file(path) for kind, path in {files!r}.items()}}\n"
        "assert not [n for n in sys.modules if n.split('.')[0] == 'clvr'], 'clvr was imported'\n"
        "print(json.dumps({kind: {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}\n"
        "                  for kind, state in states.items()}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for kind, (m, *_) in exports.items():
        want = {k: [list(v.shape), str(v.dtype)] for k, v in m.encoder.state_dict().items()}
        assert got[kind] == want, kind
        assert any(k.endswith("running_mean") for k in want) and any(k.endswith("num_batches_tracked") for k in want)


def test_load_encoder_rebuilds_the_trained_backbone_exactly(exported):
    kind, m, _, weights, _ = exported
    loaded = load_encoder(weights)
    assert not loaded.training
    reference = m.encoder.eval()
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    bn_means = [v for k, v in reference.state_dict().items() if k.endswith("running_mean")]
    assert bn_means and all(v.abs().sum() > 0 for v in bn_means)     # trained, not the defaults
    x = sample(kind, b=3)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_the_sidecar_says_how_to_rebuild_and_feed_it(exported):
    kind, m, run, weights, side = exported
    assert side == weights.with_suffix(".json")
    meta = describe(weights)
    assert meta == json.loads(side.read_text()) == describe(side)
    method, _, architecture, feed = CASES[kind]
    assert meta["architecture"] == dict(architecture, num_features=m.encoder.num_features)
    assert meta["input"] == feed
    assert (meta["method"], meta["step"], meta["clvr_version"]) == (method, 12, clvr.__version__)
    assert meta["source"] == str((run / "checkpoints" / "step-00000012.pt").resolve())
    assert meta["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["tensors"] == len(m.encoder.state_dict())
    assert sorted(p.name for p in weights.parent.iterdir()) == ["encoder.json", "encoder.safetensors"]


def test_export_errors_name_the_file(tmp_path):
    m = get_method("simclr")(CASES["image"][1])
    good = checkpoint_dict(m, "image")
    with pytest.raises(ValueError, match=r"enc\.pt.*must end with \.safetensors"):
        export_encoder(tmp_path, tmp_path / "enc.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"run: no checkpoints in"):
        export_encoder(tmp_path / "run", tmp_path / "e.safetensors")
    no_entry = save_checkpoint(tmp_path / "a", 1, {"step": 1, "model": good["model"]})
    with pytest.raises(CheckpointError, match=r"00000001\.pt has no 'encoder' entry.*not written by clvr train"):
        export_encoder(no_entry, tmp_path / "e.safetensors")
    bad_prefix = dict(good, encoder=dict(good["encoder"], prefix="target.backbone."))
    path = save_checkpoint(tmp_path / "b", 1, bad_prefix)
    with pytest.raises(CheckpointError, match=r"step-00000001\.pt.*prefix 'target\.backbone\.'.*online\."):
        export_encoder(path, tmp_path / "e.safetensors")
    wrong_arch = dict(good, encoder=dict(good["encoder"], architecture={"kind": "image", "name": "resnet18"}))
    path = save_checkpoint(tmp_path / "c", 1, wrong_arch)
    with pytest.raises(EncoderFileError, match=r"missing \(\d+\): stages.*unexpected \(\d+\): body"):
        export_encoder(path, tmp_path / "e.safetensors")
    assert not list(tmp_path.glob("e.*"))                       # nothing written on failure


def test_load_encoder_errors(exported, tmp_path):
    kind, _, _, weights, side = exported
    copy = tmp_path / "enc.safetensors"
    copy.write_bytes(weights.read_bytes())
    with pytest.raises(EncoderFileError, match=r"enc\.safetensors: no sidecar .*enc\.json"):
        load_encoder(copy)
    meta = json.loads(side.read_text())
    other = {"image": {"kind": "image", "name": "resnet18", "options": {"stem": "cifar"}},
             "video": {"kind": "video", "name": "frames:tiny"}}[kind]
    (tmp_path / "enc.json").write_text(json.dumps(dict(meta, architecture=other)))
    with pytest.raises(EncoderFileError, match=r"enc\.safetensors: the weights do not fit .*missing.*unexpected"):
        load_encoder(copy)
    (tmp_path / "enc.json").write_text(json.dumps(meta))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(EncoderFileError, match=r"enc\.safetensors does not match the sha256"):
        load_encoder(copy)
    (tmp_path / "enc.json").write_text("{not json")
    with pytest.raises(EncoderFileError, match=r"sidecar .*enc\.json is not valid JSON"):
        describe(copy)

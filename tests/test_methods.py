"""Every method, one optimisation step on batches from the real pipeline (the embedded digits
shards: images, objects, videos, captions), and its loss going down on a fixed batch.

Tiny networks and images keep this fast; the methods' own code paths (views asked for by shape,
state, gathering on one process, logs) are the ones a full run takes.
"""

from __future__ import annotations

import math

import pytest
import torch

from clvr.methods import available, get_method
from clvr.pipeline import ViewLoader
from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY = {"backbone": "tiny"}
CLIPS = {"frames": 4, "stride": 2, "size": 32}
GRID = {"side": 40, "grid": 4, "patch": 16, "stride": 8}
# method -> (demo set, config, view options on top of the method's own)
CASES = {
    "simclr": ("digits", dict(TINY, hidden=32, dim=16), {}),
    "byol": ("digits", dict(TINY, hidden=32, dim=16, predictor_hidden=32), {}),
    "moco_v1": ("digits", dict(TINY, dim=16, queue=64), {}),
    "moco_v2": ("digits", dict(TINY, dim=16, hidden=32, queue=64), {}),
    "instdisc": ("digits", dict(TINY, dim=16, negatives=64), {}),
    "pirl": ("digits", dict(TINY, dim=16, negatives=64), {"side": 48, "patch": 16}),
    # random prediction maps: from the default zero maps (test_method_semantics) the encoder gets
    # its first gradient at the second step, and this test checks the first
    "cpc_v1": ("digits", dict(TINY, steps=2, predict_init="random"), GRID),
    "cpc_v2": ("digits", dict(TINY, steps=2, predict_init="random"), GRID),
    "object_contrast": ("digits-objects", dict(TINY, hidden=32, dim=16, image_weight=0.5),
                        {"objects": 3, "size": 24}),
    "clip": ("digits-captions", dict(TINY, text="bytes_tiny", dim=16), {}),
    "video_simclr": ("digits-video", dict(backbone="r2plus1d_tiny", hidden=32, dim=16), CLIPS),
    "video_moco": ("digits-video", dict(backbone="frames:tiny", hidden=32, dim=16, queue=64), CLIPS),
    "video_byol": ("digits-video", dict(backbone="r2plus1d_tiny", hidden=32, dim=16, predictor_hidden=32), CLIPS),
}
BATCH = 8


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demos")
    return {name: make_demo(root / name, name, limit=24) / "train"
            for name in ("digits", "digits-objects", "digits-video", "digits-captions")}


@pytest.fixture(scope="module")
def batches(demos):
    """One batch per method, read with the method's own generator, options and recipe (at 32 px)."""
    cache, out = {}, {}
    for name, (demo, _, options) in CASES.items():
        cls = get_method(name)
        view_options = {**cls.view_options, **options}
        recipe = {"base": cls.recipe, "size": 32} if cls.recipe else None
        key = (demo, cls.views, repr(sorted(view_options.items())), repr(recipe))
        if key not in cache:
            ld = ViewLoader(demos[demo], cls.views, recipe=recipe, batch_size=BATCH, seed=1,
                            view_options=view_options)
            cache[key] = (next(iter(ld)), ld.num_samples)
            ld.close()
        out[name] = cache[key]
    return out


def build(name, num_samples):
    torch.manual_seed(0)
    return get_method(name)(CASES[name][1], num_samples=num_samples)


def test_every_registered_method_is_tested_here():
    assert sorted(CASES) == available()


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_optimisation_step_from_the_pipeline(name, batches):
    batch, n = batches[name]
    method = build(name, n)
    trainable = {k: p for k, p in method.named_parameters() if p.requires_grad}
    before = {k: p.detach().clone() for k, p in trainable.items()}
    opt = torch.optim.SGD(trainable.values(), lr=0.1)

    loss, logs = method(batch)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.requires_grad
    assert {"pos_sim", "neg_sim", "pos_acc"} <= set(logs)
    assert all(not v.requires_grad and math.isfinite(float(v)) for v in logs.values())
    assert 0.0 <= float(logs["pos_acc"]) <= 1.0
    opt.zero_grad()
    loss.backward()
    encoder_grads = [p.grad for p in method.encoder.parameters() if p.requires_grad]
    assert encoder_grads and all(g is not None for g in encoder_grads), "the backbone receives gradients"
    assert any(float(g.abs().sum()) > 0 for g in encoder_grads)
    opt.step()
    assert isinstance(method.after_step(0, 10), dict)
    moved = {id(p) for k, p in trainable.items() if not torch.equal(p.detach(), before[k])}
    assert any(id(p) in moved for p in method.encoder.parameters()), "the step changes the backbone"


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_decreases_on_a_fixed_batch(name, batches):
    """Fixed batch, fixed state: the bank/queue is put back and the noise draws repeat each step,
    so the objective is one function of the weights and plain gradient descent lowers it."""
    batch, n = batches[name]
    method = build(name, n)
    state = {k: v.clone() for k, v in method.named_buffers()}
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(6):
        with torch.no_grad():
            for k, v in method.named_buffers():
                if not k.endswith(("running_mean", "running_var", "num_batches_tracked", "log_z_value")):
                    v.copy_(state[k])
        torch.manual_seed(1)
        loss, _ = method(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step, 6)
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"{name}: {losses}"

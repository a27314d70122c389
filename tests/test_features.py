"""Feature extraction (clvr.methods.features) on a small digits shard set, and its wiring to kNN.

The loaders are real (DALI on the CPU, 32 px views); the order-, padding- and process-related
cases use hand-made batches, which need no shards.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conftest import make_demo
from clvr.methods.backbones import backbone
from clvr.methods.features import eval_loader, extract_features
from clvr.methods.knn import knn_accuracy
from clvr.pipeline.batch import ViewBatch

SIZE, BATCH = 32, 5          # 12 val samples in batches of 5: the last batch has 3 padding rows


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("features") / "d", "digits", limit=60)


@pytest.fixture(scope="module")
def val_loader(digits):
    return eval_loader(digits / "val", batch_size=BATCH, size=SIZE, device="cpu")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return backbone("tiny")


def test_eval_loader_is_deterministic_and_sees_every_sample_once(val_loader, digits):
    assert not val_loader.shuffle and val_loader.last_batch == "pad"
    assert val_loader.view_names == ("view0",)
    assert [r.size for r in val_loader.ctx.recipes] == [SIZE]
    recipe = val_loader.ctx.recipes[0]
    assert recipe.active() == ["crop"] and recipe.crop.center == 1.0     # small views: whole square
    assert (recipe.flip.p, recipe.jitter.p, recipe.grayscale.p, recipe.blur.p) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="eval_loader sets recipe, shuffle itself"):
        eval_loader(digits / "val", shuffle=True, recipe="simclr")


def test_eval_loader_arguments(monkeypatch):
    import clvr.pipeline.loader as loader_mod
    calls = []
    monkeypatch.setattr(loader_mod, "ViewLoader", lambda *a, **kw: calls.append((a, kw)))
    eval_loader("shards/val", seed=3)
    eval_loader("clips", 8, views="video_clips", size=64, device="cpu")
    eval_loader("x", views="two_view", view_options={"views": 2})
    eval_loader("y", size=160, center_crop=0.5, normalize={"mean": (0.5, 0.5, 0.5), "std": [0.25] * 3})
    assert calls[0] == (("shards/val", "two_view"), dict(
        recipe={"base": "eval", "size": 224, "crop": {"center": 0.875}}, batch_size=256, shuffle=False, last_batch="pad", device="auto",
        view_options={"views": 1}, seed=3))
    assert calls[1][1]["recipe"] == {"base": "eval", "size": 64, "crop": {"center": 1.0}}
    assert calls[1][1]["batch_size"] == 8
    assert calls[1][1]["view_options"] == {"clips": 1} and calls[1][1]["device"] == "cpu"
    assert calls[2][1]["view_options"] == {"views": 2}
    assert calls[3][1]["recipe"] == {"base": "eval", "size": 160, "crop": {"center": 0.5},
                                     "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}


def test_features_are_the_encoder_on_the_same_views(val_loader, digits, encoder):
    feats, labels, index = extract_features(encoder, val_loader)
    n = val_loader.num_samples
    assert n == 12 and feats.shape == (n, encoder.num_features) and feats.dtype == torch.float32
    assert labels.dtype == index.dtype == torch.int64
    assert torch.equal(index, torch.arange(n))                          # every sample once, sorted

    other = eval_loader(digits / "val", batch_size=BATCH, size=SIZE, device="cpu")
    seen_labels = {}
    for step, batch in enumerate(other):
        seen_labels.update(zip(batch.index[batch.valid].tolist(), batch.label[batch.valid].tolist()))
        if step == 0:
            encoder.eval()
            expected = encoder(batch.views[0])
            encoder.train()
            torch.testing.assert_close(feats[batch.index], expected, rtol=1e-5, atol=1e-6)
    assert sorted(seen_labels) == list(range(n))
    assert labels.tolist() == [seen_labels[i] for i in range(n)]
    assert len(set(labels.tolist())) > 1

    again = extract_features(encoder, val_loader)                       # a second epoch
    assert all(torch.equal(a, b) for a, b in zip((feats, labels, index), again))


def test_train_and_eval_modes_are_restored(val_loader, encoder):
    encoder.train()
    encoder.body[1].eval()                                              # a frozen BatchNorm
    before = [m.training for m in encoder.modules()]
    feats, _, _ = extract_features(encoder, val_loader)
    assert [m.training for m in encoder.modules()] == before
    encoder.eval()
    eval_feats, _, _ = extract_features(encoder, val_loader)
    assert not encoder.training and torch.equal(feats, eval_feats)      # extraction ran in eval mode
    encoder.train()


def test_knn_on_extracted_features(digits, val_loader, encoder):
    train_loader = eval_loader(digits / "train", batch_size=16, size=SIZE, device="cpu")
    train_f, train_y, _ = extract_features(encoder, train_loader)
    val_f, val_y, _ = extract_features(encoder, val_loader)
    assert len(train_f) == train_loader.num_samples == 48
    acc = knn_accuracy(train_f, train_y, val_f, val_y, k=20)
    assert set(acc) == {"top1", "top5"} and 0 <= acc["top1"] <= acc["top5"] <= 1
    # features that are the labels themselves: the wiring (labels to rows) must give 1.0
    onehot = knn_accuracy(F.one_hot(train_y, 10).float(), train_y, F.one_hot(val_y, 10).float(), val_y)
    assert onehot == {"top1": 1.0, "top5": 1.0}


# -- hand-made batches ----------------------------------------------------------------------------

def fake_batch(index, valid=None, shape=(2,)):
    """Batch whose first view holds each sample's index (so features identify rows)."""
    index = torch.tensor(index)
    view = index.double().reshape(-1, *[1] * len(shape)).expand(len(index), *shape).clone()
    valid = torch.ones(len(index), dtype=torch.bool) if valid is None else torch.tensor(valid)
    return ViewBatch(views=(view, view + 1000), names=("view0", "view1"), index=index,
                     label=index % 3, valid=valid)


class Flatten(nn.Module):
    """(B, ...) -> (B, 2): the mean of each sample's first view and a constant."""

    def forward(self, x):
        self.seen = x.shape
        return torch.stack([x.flatten(1).mean(1), torch.ones(len(x))], 1)


def test_rows_are_sorted_by_index_deduplicated_and_padding_dropped():
    batches = [fake_batch([7, 2, 5]), fake_batch([0, 2, 9], valid=[True, True, False]),
               fake_batch([4, 4], valid=[False, False]), fake_batch([1, 6, 3])]
    feats, labels, index = extract_features(Flatten(), batches)
    assert index.tolist() == [0, 1, 2, 3, 5, 6, 7]
    assert feats[:, 0].tolist() == index.float().tolist() and labels.tolist() == (index % 3).tolist()
    assert feats.dtype == torch.float32                                 # float64 output is cast


def test_video_views_of_several_clips_give_the_first_clip():
    enc = Flatten()
    batch = fake_batch([0, 1], shape=(2, 4, 3, 5, 5))                   # (B, clips, T, 3, H, W)
    batch.views = (batch.views[0] * torch.tensor([1.0, -1.0])[None, :, None, None, None, None],)
    feats, _, _ = extract_features(enc, [batch])
    assert enc.seen == (2, 4, 3, 5, 5) and feats[:, 0].tolist() == [0.0, 1.0]
    extract_features(enc, [fake_batch([0, 1], shape=(4, 3, 5, 5))])     # (B, T, 3, H, W) as is
    assert enc.seen == (2, 4, 3, 5, 5)


def test_bad_encoder_output_and_empty_loader_are_errors():
    with pytest.raises(ValueError, match=r"\(3, D\) features; got \(3, 2, 1\)"):
        extract_features(nn.Unflatten(1, (2, 1)), [fake_batch([0, 1, 2])])
    with pytest.raises(ValueError, match="no valid sample"):
        extract_features(Flatten(), [fake_batch([0], valid=[False])])


# -- two processes --------------------------------------------------------------------------------

RANK_BATCHES = {0: [[4, 0, 2], [6, 8, 0]],           # 0 repeated within rank 0 (padding-like)
                1: [[5, 1, 3], [7, 0, 9]]}           # 0 again on rank 1


def worker(rank, init, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        result = extract_features(Flatten(), [fake_batch(b) for b in RANK_BATCHES[rank]])
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_process_returns_every_processs_rows(tmp_path):
    # forked: the workers use no DALI, and start in a fraction of a spawned worker's time
    mp.start_processes(worker, args=(f"file://{tmp_path}/init", str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    for rank in range(2):
        feats, labels, index = torch.load(tmp_path / f"rank{rank}.pt")
        assert index.tolist() == list(range(10))
        assert feats[:, 0].tolist() == [float(i) for i in range(10)] and labels.tolist() == [i % 3 for i in range(10)]

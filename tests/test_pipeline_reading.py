"""Reading shards with ViewLoader: specs, rank split, exact epochs, determinism, labels."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clvr.pipeline import PipelineError, ViewLoader
from conftest import epoch_indices as epochs, make_demo, read_samples

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=203, shard_size=37)


def loader(data, **kw):
    kw.setdefault("recipe", "simclr-cifar")
    kw.setdefault("batch_size", 16)
    kw.setdefault("num_threads", 1)
    return ViewLoader(data, "two_view", **kw)


def test_two_view_batch_shapes_dtypes_and_values(digits):
    ld = loader(digits / "train")
    b = next(iter(ld))
    assert b.names == ("view0", "view1")
    assert len(b) == 16 and b.kind == "two_view"
    for v in b.views:
        assert v.shape == (16, 3, 32, 32) and v.dtype == torch.float32
        # Normalised with ImageNet statistics: (0 - 0.485) / 0.229 .. (1 - 0.406) / 0.225
        assert v.min() >= -0.485 / 0.229 - 1e-4 and v.max() <= 0.594 / 0.225 + 1e-4
    assert not torch.equal(b.views[0], b.views[1]), "the two views must be augmented independently"
    assert b.index.dtype == torch.int64 and b.label.dtype == torch.int64 and b.valid.all()


def test_index_and_label_match_the_shards(digits):
    truth = {}
    for s in read_samples(sorted((digits / "train").glob("*.tar"))):
        truth[int(np.frombuffer(s["index.i64"], "<i8")[0])] = int(np.frombuffer(s["label.i64"], "<i8")[0])
    ld = loader(digits / "train", last_batch="pad")
    got = {}
    for b in ld:
        for i, lab in zip(b.index[b.valid].tolist(), b.label[b.valid].tolist()):
            got[i] = lab
    assert got == truth


@pytest.mark.parametrize("last_batch", ["pad", "partial"])
def test_every_sample_once_per_epoch_for_several_epochs(digits, last_batch):
    ld = loader(digits / "train", last_batch=last_batch)
    n = ld.num_samples
    assert len(ld) == -(-n // 16)
    orders = epochs(ld, 3)
    for e, seen in enumerate(orders):
        assert sorted(seen) == list(range(n)), f"epoch {e} is not exactly one pass"
    assert orders[0] != orders[1] != orders[2], "the order must be reshuffled every epoch"
    assert ld.epoch == 3


def test_drop_last_yields_full_batches_without_repeats(digits):
    ld = loader(digits / "train", last_batch="drop")
    n = ld.num_samples
    assert len(ld) == n // 16
    for seen in epochs(ld, 3):
        assert len(seen) == len(set(seen)) == len(ld) * 16


def test_breaking_out_of_an_epoch_keeps_the_next_epoch_exact(digits):
    ld = loader(digits / "train", last_batch="pad")
    it = iter(ld)
    next(it), next(it)
    del it
    seen = epochs(ld, 1)[0]
    assert sorted(seen) == list(range(ld.num_samples))
    assert ld.epoch == 2


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_parts_that_cover_the_set(digits, world):
    lds = [loader(digits / "train", rank=r, world_size=world, last_batch="pad") for r in range(world)]
    assert len({len(ld) for ld in lds}) == 1, "every rank must run the same number of steps"
    for epoch in range(2):
        parts = [epochs(ld, 1)[0] for ld in lds]
        union = collections.Counter(i for p in parts for i in p)
        assert sorted(union) == list(range(lds[0].num_samples)), f"epoch {epoch}: not complete"
        assert max(union.values()) == 1, f"epoch {epoch}: a sample was read by two ranks"


def test_drop_last_across_ranks_is_disjoint_and_equal_length(digits):
    lds = [loader(digits / "train", rank=r, world_size=2, last_batch="drop") for r in range(2)]
    parts = [epochs(ld, 1)[0] for ld in lds]
    assert len(parts[0]) == len(parts[1]) == len(lds[0]) * 16
    assert not set(parts[0]) & set(parts[1])


def test_same_seed_same_batches_other_seed_other_batches(digits):
    def first(seed):
        b = next(iter(loader(digits / "train", seed=seed)))
        return b.index.clone(), b.views[0].clone(), b.views[1].clone()

    a, b, c = first(3), first(3), first(4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert not torch.equal(a[0], c[0])


def test_seek_resumes_the_stream_at_the_same_batch(digits):
    """A fresh loader positioned with seek(e, s) yields what the one that ran there yields next,
    views included (what a resumed training run relies on)."""
    ran = loader(digits / "train", seed=5)
    steps = len(ran)
    seen = []
    for epoch in range(3):
        for step, b in enumerate(ran):
            seen.append((epoch, step, b.index.clone(), b.views[0].clone()))
    for e, s in [(0, 3), (1, 0), (2, steps - 1)]:
        fresh = loader(digits / "train", seed=5)
        fresh.seek(e, s)
        got = list(fresh)
        expected = [x for x in seen if x[0] == e and x[1] >= s]
        assert len(got) == len(expected) == steps - s
        for b, (_, step, index, view) in zip(got, expected):
            assert b.step == step and b.epoch == e
            assert torch.equal(b.index, index) and torch.equal(b.views[0], view)
        nxt = next(iter(fresh), None)
        if e < 2:
            following = [x for x in seen if x[0] == e + 1][0]
            assert torch.equal(nxt.index, following[2]), "the epoch after a seek is exact too"
    used = loader(digits / "train", seed=5)
    next(iter(used))
    with pytest.raises(PipelineError, match="fresh loader"):
        used.seek(1, 0)
    with pytest.raises(PipelineError, match="step must be in"):
        loader(digits / "train", seed=5).seek(0, steps)


def test_no_shuffle_reads_in_stored_order(digits):
    ld = loader(digits / "train", shuffle=False, last_batch="pad")
    seen = epochs(ld, 1)[0]
    assert seen == list(range(ld.num_samples))


def test_brace_pattern_list_and_manifest_specs_agree(digits):
    tars = sorted((digits / "train").glob("*.tar"))
    brace = str(digits / "train" / f"train-{{000000..{len(tars) - 1:06d}}}.tar")
    for spec in (brace, [str(t) for t in tars], digits / "train" / "manifest.json"):
        ld = loader(spec, last_batch="pad", shuffle=False)
        assert ld.num_samples == 162
        assert epochs(ld, 1)[0] == list(range(162))
    sub = loader([str(t) for t in tars[:2]], last_batch="pad", shuffle=False)
    assert sub.num_samples == 74


def test_root_with_splits_asks_for_one(digits):
    with pytest.raises(PipelineError, match="several splits"):
        loader(digits)
    assert loader(digits, split="val").num_samples == 41


def test_spec_errors_name_the_path(digits, tmp_path):
    with pytest.raises(PipelineError, match="no such shard set"):
        loader(tmp_path / "nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(digits / "train", copy)
    (copy / "train-000001.idx").unlink()
    with pytest.raises(PipelineError, match=r"train-000001.tar: no DALI index file"):
        loader(str(copy / "train-{000000..000004}.tar"))
    with pytest.raises(PipelineError, match="cannot fill one batch"):
        loader(digits / "val", batch_size=64, world_size=2, rank=0)


def test_options_are_checked(digits):
    with pytest.raises(PipelineError, match="last_batch"):
        loader(digits / "train", last_batch="keep")
    with pytest.raises(PipelineError, match="did you mean 'shared_crop'"):
        ViewLoader(digits / "train", "two_view", view_options={"shared_crops": True})
    with pytest.raises(PipelineError, match="did you mean 'two_view'"):
        ViewLoader(digits / "train", "two_veiw")
    with pytest.raises(PipelineError, match="gpu"):
        if torch.cuda.is_available():
            raise PipelineError("gpu present: nothing to check")
        loader(digits / "train", device="gpu")

"""``ViewLoader(samples=...)``: reading a subset of a shard set by global sample index.

The samples left out are dropped from the index files given to DALI, so they are never read nor
decoded; the epoch contract (length, coverage, rank split) is the subset's.
"""

from __future__ import annotations

import collections
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clvr.pipeline import PipelineError, ViewLoader
from clvr.pipeline.errors import SampleError
from clvr.pipeline.source import read_index
from conftest import corrupt_image, epoch_indices, make_demo, read_samples

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SUBSET = {0, 2, 7, 15, 16, 23, 30}         # both shards of 16; 7 samples: a last batch to pad


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """digits train: 32 samples in two shards of 16 (indices 0-15 and 16-31)."""
    return make_demo(tmp_path_factory.mktemp("subset") / "d", limit=40, shard_size=16) / "train"


@pytest.fixture(scope="module")
def labels(digits) -> dict[int, int]:
    out = {}
    for s in read_samples(sorted(digits.glob("*.tar"))):
        out[int(np.frombuffer(s["index.i64"], "<i8")[0])] = int(np.frombuffer(s["label.i64"], "<i8")[0])
    return out


def loader(data, samples, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_threads", 1)
    kw.setdefault("shuffle", False)
    kw.setdefault("last_batch", "pad")
    return ViewLoader(data, "two_view", recipe={"base": "none", "size": 16}, samples=samples, **kw)


def dali_keys(ld) -> list[str]:
    """The keys listed in the index files the loader gives DALI."""
    return [e.key for idx in ld._index_files for e in read_index(idx)]


def test_subset_is_read_once_per_epoch_with_its_labels(digits, labels):
    assert len(labels) == 32 and sorted(labels) == list(range(32))
    ld = loader(digits, list(SUBSET) + [7])           # any iterable; repeats count once
    assert ld.selection == frozenset(SUBSET)
    assert ld.num_samples == ld.samples_per_epoch == 7
    assert len(ld) == 2                                # ceil(7 / 4)
    for _ in range(2):
        seen, got = [], {}
        for b in ld:
            assert len(b) == 4
            seen += b.index[b.valid].tolist()
            got.update(zip(b.index[b.valid].tolist(), b.label[b.valid].tolist()))
        assert seen == sorted(SUBSET)                  # stored order, each once
        assert got == {i: labels[i] for i in SUBSET}
    assert ld.skipped == []
    assert sorted(dali_keys(ld)) == [f"{i:09d}" for i in sorted(SUBSET)]


def test_subset_with_shuffling_covers_it_every_epoch(digits):
    ld = loader(digits, SUBSET, shuffle=True, seed=3)
    orders = epoch_indices(ld, 3)
    assert all(sorted(o) == sorted(SUBSET) for o in orders)
    drop = loader(digits, SUBSET, shuffle=True, last_batch="drop")
    assert len(drop) == 1 and drop.samples_per_epoch == 4
    (seen,) = epoch_indices(drop, 1)
    assert len(seen) == len(set(seen)) == 4 and set(seen) <= SUBSET


def test_two_ranks_split_the_subset_exactly(digits):
    lds = [loader(digits, SUBSET, rank=r, world_size=2) for r in range(2)]
    assert len(lds[0]) == len(lds[1]) == 1             # parts of 3 and 4 samples, batch 4
    assert [ld.part_size for ld in lds] == [3, 4]
    for _ in range(2):
        parts = [epoch_indices(ld, 1)[0] for ld in lds]
        union = collections.Counter(i for p in parts for i in p)
        assert set(union) == SUBSET and max(union.values()) == 1


def test_a_shard_without_selected_samples_is_left_out(digits):
    ld = loader(digits, {17, 20})
    assert [Path(t).name for t in ld.shards.tars] == ["train-000001.tar"]
    assert epoch_indices(ld, 1)[0] == [17, 20]


def test_samples_left_out_are_never_decoded(digits, tmp_path):
    """A corrupt image outside the subset does no harm (and is not reported as skipped); inside
    it, it is found and skipped as usual, and only it."""
    copy = tmp_path / "train"
    shutil.copytree(digits, copy)
    key = corrupt_image(copy, 0, 5)
    assert key == "000000005"
    ld = loader(copy, SUBSET, on_error="raise")
    assert epoch_indices(ld, 2) == [sorted(SUBSET)] * 2
    assert ld.skipped == [] and key not in dali_keys(ld)
    with pytest.raises(SampleError, match=key):        # the control: reading it does fail
        epoch_indices(loader(copy, SUBSET | {5}, on_error="raise"), 1)
    skip = loader(copy, SUBSET | {5}, on_error="skip")
    later = epoch_indices(skip, 2)[1]                  # the epoch that finds it is not exact
    assert sorted(later) == sorted(SUBSET)
    assert [(Path(s["shard"]).name, s["key"]) for s in skip.skipped] == [("train-000000.tar", key)]
    assert skip.num_samples == len(SUBSET)


def test_unknown_indices_are_named(digits):
    with pytest.raises(PipelineError, match=r"samples= names 3 sample\(s\) the shard set does not have: "
                                            r"32, 40, 1000"):
        loader(digits, {1, 32, 40, 1000})
    with pytest.raises(PipelineError, match=r"not have: 32, 33, 34, 35, 36 and 2 more"):
        loader(digits, range(32, 39))


@pytest.mark.parametrize("bad,message", [(set(), "samples= is empty"), ([], "samples= is empty"),
                                         (5, "iterable of global sample indices"),
                                         ("12", "iterable of global sample indices"),
                                         ([1, 2.5], r"got 2\.5"), ([True], "got True")])
def test_bad_selections_are_rejected(digits, bad, message):
    with pytest.raises(PipelineError, match=message):
        loader(digits, bad)


def test_numpy_indices_are_accepted(digits):
    ld = loader(digits, np.array([3, 19]))
    assert epoch_indices(ld, 1)[0] == [3, 19] and len(ld) == 1


def test_keys_that_are_not_indices_need_clvr_shards(tmp_path):
    """A foreign tar whose keys are names, not nine-digit indices."""
    tar = tmp_path / "foreign.tar"
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key in ("cat", "dog"):
            for ext, data in (("index.i64", np.int64(0).tobytes()), ("png", b"\x89PNG")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    lines = [" ".join(f"{m.name.split('.', 1)[1]} {m.offset_data} {m.size} {m.name}" for m in members[i:i + 2])
             for i in (0, 2)]
    tar.with_suffix(".idx").write_text("v1.2 2\n" + "\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=r"foreign\.tar: key 'cat' .*samples= needs shards written by clvr shard"):
        loader(str(tar), {0})


def test_remote_shards_are_refused(digits):
    with pytest.raises(PipelineError, match="samples= is not supported for remote"):
        loader(f"file://{digits}/manifest.json", {0, 1})

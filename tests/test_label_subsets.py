"""Label subsets: class-balanced, reproducible, written and read back as files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clvr.methods.label_subsets import balanced_subset, read_subset, write_subset


def data(seed=0, classes=10, sizes=None):
    rng = np.random.default_rng(seed)
    sizes = sizes or [int(x) for x in rng.integers(20, 200, classes)]
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    index = rng.permutation(10_000)[:len(labels)]          # global indices, not 0..N-1
    return index, labels, sizes


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_every_class_keeps_its_share(fraction):
    index, labels, sizes = data()
    chosen = balanced_subset(index, labels, fraction, seed=3)
    lookup = dict(zip(index.tolist(), labels.tolist()))
    counts = np.bincount([lookup[i] for i in chosen], minlength=len(sizes))
    assert counts.tolist() == [max(1, round(fraction * n)) for n in sizes]
    assert len(set(chosen.tolist())) == len(chosen) and set(chosen.tolist()) <= set(index.tolist())
    assert chosen.tolist() == sorted(chosen.tolist())


def test_the_same_seed_gives_the_same_subset_whatever_the_order():
    index, labels, _ = data()
    a = balanced_subset(index, labels, 0.1, seed=7)
    perm = np.random.default_rng(1).permutation(len(index))
    b = balanced_subset(index[perm], labels[perm], 0.1, seed=7)
    c = balanced_subset(index, labels, 0.1, seed=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_written_files_read_back_and_name_their_contents(tmp_path):
    index, labels, sizes = data(classes=3, sizes=[100, 50, 10])
    written = write_subset(tmp_path / "one_percent.json", index, labels, 0.01, seed=0)
    assert written["per_class"] == {"0": 1, "1": 1, "2": 1} and written["classes"] == 3
    assert np.array_equal(read_subset(tmp_path / "one_percent.json"), balanced_subset(index, labels, 0.01, seed=0))
    assert json.loads((tmp_path / "one_percent.json").read_text())["fraction"] == 0.01


def test_bad_input_is_named(tmp_path):
    index, labels, _ = data()
    with pytest.raises(ValueError, match="fraction must be in"):
        balanced_subset(index, labels, 0.0)
    with pytest.raises(ValueError, match="have no label"):
        balanced_subset(index, np.where(labels == 0, -1, labels), 0.1)
    with pytest.raises(ValueError, match="repeat"):
        balanced_subset(np.zeros(len(labels), dtype=int), labels, 0.1)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="x.json: not a label subset"):
        read_subset(tmp_path / "x.json")
    with pytest.raises(ValueError, match="cannot read"):
        read_subset(tmp_path / "missing.json")

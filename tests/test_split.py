"""Stratified, seeded train/val splitting and shuffling."""

from collections import Counter

import pytest

from clvr.shards.job import Item
from clvr.shards.split import shuffled, stratified_split


def _items(counts):
    return [Item(f"{c}/{i}", c) for c, n in enumerate(counts) for i in range(n)]


def test_split_size_and_per_class_shares():
    items = _items([50, 30, 20, 7])
    train, val = stratified_split(items, 0.2, seed=1)
    assert len(val) == round(0.2 * len(items)) and len(train) + len(val) == len(items)
    per = Counter(it.label for it in val)
    for c, n in enumerate([50, 30, 20, 7]):
        assert abs(per[c] - 0.2 * n) < 1.0
    assert not {it.src for it in train} & {it.src for it in val}


def test_split_is_seeded_and_keeps_input_order():
    items = _items([40, 40])
    a = stratified_split(items, 0.25, seed=3)
    assert a == stratified_split(items, 0.25, seed=3)
    assert a != stratified_split(items, 0.25, seed=4)
    pos = {it.src: i for i, it in enumerate(items)}
    for part in a:
        assert [pos[it.src] for it in part] == sorted(pos[it.src] for it in part)


def test_unlabelled_items_form_one_stratum():
    items = [Item(str(i)) for i in range(10)]
    train, val = stratified_split(items, 0.3, seed=0)
    assert len(val) == 3 and len(train) == 7


def test_bad_fraction_and_shuffle():
    with pytest.raises(ValueError, match="val-fraction"):
        stratified_split(_items([3]), 1.0, 0)
    xs = list(range(100))
    assert shuffled(xs, 1) == shuffled(xs, 1) != xs and sorted(shuffled(xs, 1)) == xs


def test_a_class_keeps_at_least_one_item_in_train():
    items = _items([1, 1, 10])
    train, val = stratified_split(items, 0.5, seed=0)
    assert {it.label for it in train} == {0, 1, 2}
    assert Counter(it.label for it in val) == Counter({2: round(0.5 * 12)})  # the total still holds

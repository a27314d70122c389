"""Memory bank (InstDisc, PIRL) and key queue (MoCo): update rules, wrap-around, state, errors."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.memory_bank import MemoryBank
from clvr.methods.queue import KeyQueue


def test_bank_starts_normalised_and_updates_by_the_formula():
    bank = MemoryBank(10, 4, momentum=0.5).double()
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(10, dtype=torch.float64))
    before = bank.bank.clone()
    idx = torch.tensor([2, 7])
    f = torch.randn(2, 4, dtype=torch.float64)
    bank.update(idx, f)
    for row, i in enumerate(idx.tolist()):
        v = 0.5 * before[i] + 0.5 * f[row]
        assert torch.allclose(bank.bank[i], v / v.norm(), atol=1e-12)
    others = [i for i in range(10) if i not in (2, 7)]
    assert torch.equal(bank.bank[others], before[others])
    assert torch.equal(bank.get(idx), bank.bank[idx])


def test_bank_refuses_indices_outside_it():
    bank = MemoryBank(5, 3)
    with pytest.raises(IndexError, match="outside the memory bank of 5"):
        bank.update(torch.tensor([5]), torch.randn(1, 3))


def test_bank_negatives_are_uniform_and_seeded():
    bank = MemoryBank(8, 3)
    g = torch.Generator().manual_seed(1)
    draws = bank.negatives(16000, generator=g)
    counts = torch.bincount(draws, minlength=8).double()
    assert ((counts - 2000).abs() < 200).all()
    again = bank.negatives(16000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)
    assert bank.negatives(5, batch=3).shape == (3, 5)


def test_bank_state_round_trip():
    a = MemoryBank(6, 3, seed=1)
    a.update(torch.tensor([0, 4]), torch.randn(2, 3))
    b = MemoryBank(6, 3, seed=2)
    assert not torch.equal(a.bank, b.bank)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.bank, b.bank)


def test_queue_is_fifo_and_wraps_around():
    q = KeyQueue(size=6, dim=2)
    batches = [torch.nn.functional.normalize(torch.randn(2, 2), dim=1) for _ in range(4)]
    for b in batches:
        q.enqueue(b)
    # 4 batches of 2 into 6 slots: slots 0-1 hold the 4th batch, 2-3 the 2nd, 4-5 the 3rd
    assert torch.equal(q.keys[0:2], batches[3])
    assert torch.equal(q.keys[2:4], batches[1])
    assert torch.equal(q.keys[4:6], batches[2])
    assert int(q.pointer) == 2


def test_queue_size_must_be_a_multiple_of_the_global_batch():
    q = KeyQueue(size=10, dim=2)
    with pytest.raises(ValueError, match="not a multiple of the 3 keys enqueued per step"):
        q.enqueue(torch.randn(3, 2))


def test_current_keys_are_never_their_own_negatives():
    q = KeyQueue(size=4, dim=3)
    keys = torch.nn.functional.normalize(torch.randn(2, 3), dim=1)
    negatives = q.negatives()                    # taken before this step's keys go in
    q.enqueue(keys)
    assert not any(torch.allclose(k, n) for k in keys for n in negatives)
    assert any(torch.allclose(keys[0], n) for n in q.negatives())   # they are there for the next step
    negatives.add_(1.0)                           # a copy: the loss cannot change the queue
    assert not torch.equal(negatives, q.keys)


def test_queue_state_round_trip():
    a = KeyQueue(size=4, dim=2, seed=1)
    a.enqueue(torch.randn(2, 2))
    b = KeyQueue(size=4, dim=2, seed=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.keys, b.keys) and int(b.pointer) == 2

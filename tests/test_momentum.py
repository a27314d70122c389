"""Momentum encoders: the EMA rule in float64, BYOL's schedule, no gradient, state."""

from __future__ import annotations

import math

import pytest
import torch

from clvr.methods.momentum import MomentumEncoder, byol_momentum


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).double()


def test_ema_follows_the_formula_and_copies_buffers():
    online = net()
    ema = MomentumEncoder(online)
    before = [p.clone() for p in ema.target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()(torch.randn(5, 3, dtype=torch.float64))      # moves the BN statistics
    ema.update(online, 0.9)
    for t, b, o in zip(ema.target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-12)
        assert not torch.allclose(t, o)
    for tb, ob in zip(ema.target.buffers(), online.buffers()):
        assert torch.equal(tb, ob)


def test_momentum_one_freezes_and_zero_copies():
    online = net()
    ema = MomentumEncoder(online)
    frozen = [p.clone() for p in ema.target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    ema.update(online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.target.parameters(), frozen))
    ema.update(online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(ema.target.parameters(), online.parameters()))
    with pytest.raises(ValueError, match="momentum must be in"):
        ema.update(online, 1.5)


def test_target_gets_no_gradient():
    online = net()
    ema = MomentumEncoder(online)
    out = ema(torch.randn(4, 3, dtype=torch.float64))
    assert not out.requires_grad
    assert all(not p.requires_grad for p in ema.target.parameters())


def test_byol_schedule():
    assert byol_momentum(0, 100) == pytest.approx(0.996)
    assert byol_momentum(100, 100) == pytest.approx(1.0)
    assert byol_momentum(50, 100) == pytest.approx(1 - 0.004 * 0.5)
    for k in (13, 77):
        assert byol_momentum(k, 100) == pytest.approx(1 - 0.004 * (math.cos(math.pi * k / 100) + 1) / 2)
    values = [byol_momentum(k, 100) for k in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_state_round_trip():
    a = MomentumEncoder(net())
    b = MomentumEncoder(net())
    with torch.no_grad():
        for p in a.target.parameters():
            p.add_(0.5)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.target.parameters(), b.target.parameters()))

"""Heads: the papers' layer shapes and parameter counts."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.heads import head


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_linear_head():
    h = head("linear", 512, out_dim=128)
    assert count(h) == 512 * 128 + 128
    assert h(torch.randn(3, 512)).shape == (3, 128)


def test_mocov2_mlp_is_linear_relu_linear():
    h = head("mlp", 2048)
    assert [type(m).__name__ for m in h] == ["Linear", "ReLU", "Linear"]
    assert count(h) == (2048 * 2048 + 2048) + (2048 * 128 + 128)
    assert h(torch.randn(2, 2048)).shape == (2, 128)


def test_simclr_and_byol_heads_have_batch_norm():
    h = head("mlp_bn", 2048, hidden=4096, out_dim=256)      # BYOL's projector
    assert [type(m).__name__ for m in h] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert h[0].bias is None                                   # BN follows: no bias needed
    assert count(h) == 2048 * 4096 + 2 * 4096 + 4096 * 256 + 256
    assert h.train()(torch.randn(4, 2048)).shape == (4, 256)


def test_unknown_head_and_bad_depth():
    with pytest.raises(ValueError, match="unknown head"):
        head("mpl", 10)
    from clvr.methods.heads import mlp_head
    with pytest.raises(ValueError, match="at least 2 layers"):
        mlp_head(10, layers=1)

"""CPC's context network: causal over rows, prediction shapes per step and direction."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.cpc_context import CPCContext, ContextNet
from clvr.methods.losses import cpc


def test_context_of_a_row_never_sees_the_rows_below():
    torch.manual_seed(0)
    net = ContextNet(4, layers=3).double()
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    out = net(x)
    for i in range(6):
        grad, = torch.autograd.grad(out[:, :, i].sum(), x, retain_graph=True)
        if i < 5:
            assert grad[:, :, i + 1:].abs().max() == 0             # rows below: no influence
        assert grad[:, :, :i + 1].abs().max() > 0                  # rows up to i: influence


@pytest.mark.parametrize("directions", [1, 2, 4])
def test_predictions_fit_the_cpc_loss(directions):
    torch.manual_seed(1)
    model = CPCContext(8, steps=3, directions=directions)
    grid = torch.randn(2, 5, 5, 8)
    outs = model(grid)
    assert len(outs) == directions
    for preds, targets in outs:
        assert [p.shape for p in preds] == [(2, 5 - k, 5, 8) for k in (1, 2, 3)]
        loss = cpc(preds, targets)
        assert torch.isfinite(loss)
    # direction 1 predicts upwards: its targets are the grid turned by 180 degrees
    if directions >= 2:
        assert torch.equal(outs[1][1], torch.rot90(grid, 2, dims=(1, 2)))


def test_steps_are_capped_by_the_grid():
    preds, _ = CPCContext(4, steps=5)(torch.randn(1, 3, 3, 4))[0]
    assert len(preds) == 2


def test_training_lowers_the_loss_on_a_fixed_grid():
    torch.manual_seed(2)
    model = CPCContext(6, steps=2)
    grid = torch.randn(4, 5, 5, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        preds, targets = model(grid)[0]
        loss = cpc(preds, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    chance = torch.log(torch.tensor(4.0 * 5 * 5)).item()      # uniform over the 100 candidates
    assert losses[-1] < min(losses[0], chance) - 1.0


def test_bad_options():
    with pytest.raises(ValueError, match="directions"):
        CPCContext(4, directions=3)
    with pytest.raises(ValueError, match="steps"):
        CPCContext(4, steps=0)

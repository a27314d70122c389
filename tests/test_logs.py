"""contrast_logs against a reference that loops over anchors and candidates, in float64."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.logs import contrast_logs, mean_logs


def reference(sim, positive, exclude):
    pos, negs, hits = [], [], 0
    for i in range(sim.shape[0]):
        p = float(sim[i, positive[i]])
        mine = [float(sim[i, j]) for j in range(sim.shape[1])
                if j != positive[i] and not (exclude is not None and exclude[i, j])]
        pos.append(p)
        negs += mine
        hits += all(p > s for s in mine)
    return sum(pos) / len(pos), sum(negs) / max(len(negs), 1), hits / sim.shape[0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("with_exclude", [False, True])
def test_logs_match_the_loop_reference(seed, with_exclude):
    g = torch.Generator().manual_seed(seed)
    n, c = 7, 11
    sim = torch.rand(n, c, generator=g, dtype=torch.float64) * 2 - 1
    positive = torch.randint(c, (n,), generator=g)
    sim[torch.arange(n), positive] += 0.8 * (torch.rand(n, generator=g, dtype=torch.float64) > 0.5)
    sim[0, positive[0]], sim[2, positive[2]] = 1.5, -1.5            # one sure hit, one sure miss
    exclude = torch.rand(n, c, generator=g) < 0.3 if with_exclude else None
    if with_exclude:
        exclude[0, positive[0]] = True          # an exclusion on the positive never removes it
        exclude[1] = True
        exclude[1, (positive[1] + 1) % c] = False
    logs = contrast_logs(sim, positive, exclude)
    ref = reference(sim, positive, None if exclude is None else exclude.scatter(1, positive[:, None], False))
    assert logs["pos_sim"].item() == pytest.approx(ref[0], abs=1e-6)
    assert logs["neg_sim"].item() == pytest.approx(ref[1], abs=1e-6)
    assert logs["pos_acc"].item() == pytest.approx(ref[2], abs=1e-6)
    assert 0 < ref[2] < 1, "the case has hits and misses"


def test_default_positive_is_column_zero_and_ties_are_not_hits():
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.2, 0.3]])
    logs = contrast_logs(sim)
    assert logs["pos_acc"].item() == 0.5 and logs["pos_sim"].item() == pytest.approx(0.7)
    assert logs["neg_sim"].item() == pytest.approx((0.5 + 0.1 + 0.2 + 0.3) / 4)


def test_mean_logs():
    a = {"x": torch.tensor(1.0)}
    b = {"x": torch.tensor(3.0)}
    assert mean_logs([a, b])["x"].item() == 2.0

"""Issue 22: InstDisc's and PIRL's negatives never include the sample itself.

A sample's own bank row is its positive. Drawn as its noise too (about half the samples with
1,024 draws from 1,438 rows), it made the positive its own negative: the softmax loss could not go
below log 2 and pushed each sample away from its entry. Checked against float64 formulas: the
softmax with every row drawn is lemniscate's full softmax (each row once, the own row the label);
NCE counts, for each sample, only the noise that is not its own row, drawn from the other N - 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clvr.methods.memory_bank import MemoryBank
from clvr.methods.registry import get_method
from clvr.pipeline.batch import ViewBatch

D64 = torch.float64


def instdisc(n, **options):
    m = get_method("instdisc")(backbone="tiny", dim=8, num_samples=n, **options).to(D64).train()
    return m


def batch_of(index, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(index)
    x = torch.rand(b, 3, 16, 16, generator=g, dtype=D64)
    return ViewBatch(views=[x], names=["view0"], kind="two_view", index=torch.tensor(index),
                     label=torch.zeros(b, dtype=torch.long), valid=torch.ones(b, dtype=torch.bool))


def test_the_softmax_over_every_row_is_lemniscates_full_softmax():
    n, index = 8, [0, 3, 5, 6]
    m = instdisc(n, loss="softmax", negatives=n)                 # every row drawn, each once
    batch = batch_of(index)
    bank0 = m.bank.bank.clone()
    f = m.online(batch.views[0])
    out = m(batch)
    t = m.config.temperature
    logits = (f @ bank0.T).double() / t                          # (B, N): the own row is the label
    expected = -(logits[range(4), index] - torch.logsumexp(logits, 1)).mean()
    assert torch.allclose(out.loss, expected, atol=1e-12, rtol=0)
    # the old draw (8 of 8 with replacement, the own row among them) gave another loss
    torch.manual_seed(0)
    drawn = torch.randint(n, (n,))
    old = torch.cat([logits[range(4), index][:, None], logits[:, drawn]], 1)
    assert not torch.allclose(expected, -(old[:, 0] - torch.logsumexp(old, 1)).mean(), atol=1e-6)


def test_a_softmax_cannot_fall_below_log_2_when_the_positive_is_also_a_negative():
    """Why it mattered: the duplicated positive bounds the loss. A perfect bank (f equal to its
    own row, orthogonal to the others) gives a loss near 0 once the own row is left out."""
    n = 6
    m = instdisc(n, loss="softmax", negatives=n, temperature=0.05)
    with torch.no_grad():
        m.bank.bank.copy_(torch.eye(n, 8, dtype=D64))
    f = m.bank.bank[[0, 1, 2]]
    pos = (f * m.bank.bank[[0, 1, 2]]).sum(1)
    noise, keep = m.noise(torch.tensor([0, 1, 2]))
    loss = m.contrast(pos, f @ noise.T, keep, m.log_z_value)
    assert loss < 1e-6
    assert loss < math.log(2) - 0.5


def nce_reference(pos, neg, keep, log_z, t, others):
    """InstDisc's NCE written out per sample in float64: noise drawn uniformly from ``others``
    rows (Pn = 1 / others); row i counts its m_i kept noise samples."""
    total = 0.0
    for i in range(len(pos)):
        m_i = int(keep[i].sum())
        noise = m_i / others
        p = math.exp(float(pos[i]) / t - float(log_z))
        loss = -math.log(p / (p + noise))
        for j in range(neg.shape[1]):
            if keep[i, j]:
                q = math.exp(float(neg[i, j]) / t - float(log_z))
                loss -= math.log(noise / (q + noise))
        total += loss
    return total / len(pos)


def test_nce_leaves_the_own_row_out_of_a_shared_draw():
    n, index = 6, [0, 1, 2, 3]
    m = instdisc(n, negatives=64)                                # 64 draws of 6 rows: every sample meets its own
    batch = batch_of(index, seed=1)
    bank0 = m.bank.bank.clone()
    f = m.online(batch.views[0])
    torch.manual_seed(7)
    out = m(batch)
    torch.manual_seed(7)
    drawn = torch.randint(n, (64,))
    keep = drawn[None, :] != torch.tensor(index)[:, None]
    assert (~keep).any(1).all()                                  # the case at hand
    pos, neg = (f * bank0[index]).sum(1), f @ bank0[drawn].T
    t = m.config.temperature
    s = (neg.detach() / t).masked_select(keep)
    log_z = torch.logsumexp(s, 0) - math.log(s.numel()) + math.log(n)        # Z = N mean exp over the noise
    assert torch.allclose(m.log_z_value, log_z, atol=1e-12, rtol=0)
    expected = nce_reference(pos.detach(), neg.detach(), keep, log_z, t, n - 1)
    assert abs(float(out.loss.detach()) - expected) < 1e-10
    # the sample's own row is neither positive nor negative in the logs either
    assert 0.0 <= float(out.logs["pos_acc"]) <= 1.0


def test_a_draw_per_sample_comes_from_the_other_rows_only_and_uniformly():
    bank = MemoryBank(5, 4)
    own = torch.tensor([0, 2, 4])
    drawn = bank.negatives(20000, generator=torch.Generator().manual_seed(0), exclude=own)
    assert drawn.shape == (3, 20000)
    assert not (drawn == own[:, None]).any()
    for i in range(3):
        counts = torch.bincount(drawn[i], minlength=5).double() / 20000
        others = [r for r in range(5) if r != int(own[i])]
        assert torch.allclose(counts[others], torch.full((4,), 0.25, dtype=D64), atol=0.015)


def test_a_shared_softmax_draw_takes_each_row_at_most_once():
    bank = MemoryBank(50, 4)
    drawn = bank.negatives(30, generator=torch.Generator().manual_seed(0), replacement=False)
    assert drawn.shape == (30,) and len(set(drawn.tolist())) == 30
    assert sorted(bank.negatives(80, replacement=False).tolist()) == list(range(50))   # all rows, once


def test_pirl_draws_noise_for_each_term_and_never_the_own_row():
    m = get_method("pirl")(backbone="tiny", dim=8, negatives=8, num_samples=4, loss="softmax").to(D64).train()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 16, generator=g, dtype=D64)
    patches = torch.rand(2, 9, 3, 8, 8, generator=g, dtype=D64)
    batch = ViewBatch(views=[image, patches], names=["image", "patches"], kind="jigsaw", index=torch.tensor([1, 3]),
                      label=torch.zeros(2, dtype=torch.long), valid=torch.ones(2, dtype=torch.bool))
    bank0 = m.bank.bank.clone()
    out = m(batch)
    # with every row drawn, each term is the full softmax over the 4 rows, the own row the label
    f = F.normalize(m.image_head(m.backbone(image)), dim=1)
    t = m.config.temperature
    logits = (f @ bank0.T) / t
    expected = -(logits[[0, 1], [1, 3]] - torch.logsumexp(logits, 1)).mean()
    assert torch.allclose(out.logs["loss_image"], expected, atol=1e-12, rtol=0)

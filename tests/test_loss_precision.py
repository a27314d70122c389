"""Every loss computes in float32 under bfloat16 autocast: the same value as on float32 inputs
outside autocast (to float32 rounding), not a bfloat16 approximation of it."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.losses import byol, cpc, info_nce, nce, nt_xent, pairwise_info_nce


def cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    yield "info_nce", lambda a: info_nce(*a, temperature=0.07), (r(16, 32), r(16, 32), r(500, 32))
    yield "nt_xent", lambda a: nt_xent(*a, temperature=0.1), (r(16, 32), r(16, 32))
    yield "nce", lambda a: nce(a[0], a[1], 3.0, 0.07, 1000), (torch.rand(16, generator=g), torch.rand(16, 64, generator=g))
    yield "byol", lambda a: byol(*a), (r(16, 32), r(16, 32), r(16, 32), r(16, 32))
    yield "cpc", lambda a: cpc([a[0]], a[1], 1.0), (r(2, 3, 4, 8), r(2, 4, 4, 8))
    yield "pairwise", lambda a: pairwise_info_nce(*a, temperature=0.05), (r(16, 32), r(16, 32))


@pytest.mark.parametrize("name, loss, inputs", list(cases()), ids=[c[0] for c in cases()])
def test_losses_ignore_bfloat16_autocast_and_lift_bfloat16_inputs(name, loss, inputs):
    inputs = tuple(x.bfloat16().float() for x in inputs)      # representable in bfloat16
    reference = loss(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(inputs)
    assert inside.dtype == torch.float32
    assert inside.item() == pytest.approx(reference.item(), rel=1e-6)
    lifted = loss(tuple(x.bfloat16() for x in inputs))
    assert lifted.dtype == torch.float32 and lifted.item() == pytest.approx(reference.item(), rel=1e-6)


def test_bfloat16_arithmetic_would_have_changed_the_loss():
    # what the decorator prevents: the same InfoNCE with its matmuls in bfloat16
    g = torch.Generator().manual_seed(0)
    q, k, n = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g), torch.randn(500, 32, generator=g)
    exact = info_nce(q, k, n, temperature=0.07)
    qn, kn, nn_ = (torch.nn.functional.normalize(t, dim=1).bfloat16() for t in (q, k, n))
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ nn_.T], 1) / 0.07
    rough = (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    assert abs(rough.float().item() - exact.item()) > 1e-3

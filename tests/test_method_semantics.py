"""What each method computes, checked against the loss functions applied to its own networks.

No pipeline here: the batches are ``ViewBatch`` es built by hand from random tensors, in the
layouts of the view generators (see :mod:`clvr.pipeline.views`). Most checks run in float64 so
that "the method's loss" and "the formula on the method's embeddings" can be compared to ~1e-12.

BatchNorm couples the samples of a forward call, and ``Method.embed`` puts every view of one size
into ONE forward. Where a reference is computed in train mode, it therefore makes the same call
(the views concatenated) as the method; where samples must not interact, the method is in eval
mode (or uses LayerNorm).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clvr.methods import MethodError, get_method
from clvr.methods.losses import byol, cpc, info_nce, nce, nce_log_z, nt_xent, pairwise_info_nce
from clvr.methods.method import pairs
from clvr.methods.momentum import byol_momentum
from clvr.pipeline.batch import ViewBatch

D64 = torch.float64


# ------------------------------------------------------------------------------------ helpers

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is many times faster than two that contend
    (and than spinning OpenMP threads on a busy machine). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _bookkeeping(b, index=None):
    index = torch.arange(b) if index is None else torch.as_tensor(index, dtype=torch.long)
    return dict(index=index, label=torch.full((b,), -1, dtype=torch.long), valid=torch.ones(b, dtype=torch.bool))


def two_view_batch(b=4, size=16, views=2, seed=0, dtype=D64, index=None):
    g = _gen(seed)
    vs = tuple(torch.randn(b, 3, size, size, generator=g, dtype=dtype) for _ in range(views))
    return ViewBatch(views=vs, names=tuple(f"view{i}" for i in range(views)), kind="two_view",
                     **_bookkeeping(b, index))


def jigsaw_batch(b=4, size=16, patch=8, cells=9, seed=0, dtype=D64, index=None):
    g = _gen(seed)
    image = torch.randn(b, 3, size, size, generator=g, dtype=dtype)
    patches = torch.randn(b, cells, 3, patch, patch, generator=g, dtype=dtype)
    return ViewBatch(views=(image, patches), names=("image", "patches"), kind="jigsaw",
                     extras={"perm": torch.randint(0, 1000, (b,), generator=g)}, **_bookkeeping(b, index))


def cpc_batch(b=2, grid=4, patch=16, seed=0, dtype=D64):
    g = _gen(seed)
    patches = torch.randn(b, grid, grid, 3, patch, patch, generator=g, dtype=dtype)
    return ViewBatch(views=(patches,), names=("patches",), kind="cpc_grid", **_bookkeeping(b))


def object_batch(b=2, k=3, size=16, seed=0, dtype=D64, source=None, mask=None, index=None):
    g = _gen(seed)
    objects = torch.randn(b, k, 2, 3, size, size, generator=g, dtype=dtype)
    book = _bookkeeping(b, index)
    source = torch.arange(k).repeat(b, 1) if source is None else torch.as_tensor(source, dtype=torch.long)
    mask = torch.ones(b, k, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    extras = {"mask": mask, "category": torch.full((b, k), -1, dtype=torch.long),
              "parent": book["index"][:, None].expand(b, k).clone(),
              "box": torch.rand(b, k, 4, generator=g) * 10, "source": source}
    return ViewBatch(views=(objects,), names=("objects",), kind="object_crops", extras=extras, **book)


def video_batch(b=2, rho=3, frames=2, size=16, seed=0, dtype=D64):
    g = _gen(seed)
    clips = torch.randn(b, rho, frames, 3, size, size, generator=g, dtype=dtype)
    return ViewBatch(views=(clips,), names=("clips",), kind="video_clips",
                     extras={"frame_index": torch.zeros(b, rho, frames, dtype=torch.long)}, **_bookkeeping(b))


CAPTIONS = ["a cat on a mat", "two dogs", "an owl at night", "a red car", "snow", "a boat"]


def image_text_batch(b=4, size=16, seed=0, dtype=D64, text="default"):
    g = _gen(seed)
    image = torch.randn(b, 3, size, size, generator=g, dtype=dtype)
    text = CAPTIONS[:b] if text == "default" else text
    return ViewBatch(views=(image,), names=("image",), kind="image_text", text=text, **_bookkeeping(b))


def build(name, seed=0, dtype=D64, **config):
    torch.manual_seed(seed)
    m = get_method(name)(**config)
    return m.to(dtype)


def close(a, b, tol=1e-10):
    a, b = (torch.as_tensor(x, dtype=D64) if not isinstance(x, torch.Tensor) else x.detach().to(D64)
            for x in (a, b))
    return torch.allclose(a, b, atol=tol, rtol=0)


TINY_SIMCLR = dict(backbone="tiny", hidden=16, dim=8)
TINY_MOCO = dict(backbone="tiny", hidden=16, dim=8, queue=16, bn_splits=2)


def _cat_forward(net, views):
    """``net`` on the concatenated views, split back: what ``Method.embed`` does for one size."""
    return list(net(torch.cat(views)).chunk(len(views)))


# ------------------------------------------------------------------------------------ 1. SimCLR

def test_simclr_loss_is_nt_xent_of_its_own_projections_with_joint_batch_norm():
    m = build("simclr", **TINY_SIMCLR).train()
    batch = two_view_batch(b=5)
    out = m(batch)
    z1, z2 = _cat_forward(m.online, list(batch.views))            # BatchNorm sees both views
    assert close(out.loss, nt_xent(z1, z2, m.config.temperature), 1e-12)
    # the joint forward matters: separate forwards (per-view statistics) give another value
    s1, s2 = m.online(batch.views[0]), m.online(batch.views[1])
    assert not close(out.loss, nt_xent(s1, s2, m.config.temperature), 1e-6)


def test_simclr_uses_its_temperature():
    a = build("simclr", **TINY_SIMCLR, temperature=0.5).eval()
    batch = two_view_batch()
    z1, z2 = a.online(batch.views[0]), a.online(batch.views[1])   # eval: per-sample, exact
    assert close(a(batch).loss, nt_xent(z1, z2, 0.5), 1e-12)
    assert not close(a(batch).loss, nt_xent(z1, z2, 0.1), 1e-6)


def test_simclr_three_views_is_the_mean_over_the_three_pairs():
    m = build("simclr", **TINY_SIMCLR).train()
    batch = two_view_batch(b=4, views=3)
    out = m(batch)
    z = _cat_forward(m.online, list(batch.views))
    expected = torch.stack([nt_xent(z[i], z[j], m.config.temperature) for i, j in [(0, 1), (0, 2), (1, 2)]]).mean()
    assert close(out.loss, expected, 1e-12)
    # not just the first pair
    assert not close(out.loss, nt_xent(z[0], z[1], m.config.temperature), 1e-6)


def test_simclr_logs_on_hand_made_views():
    m = build("simclr", **TINY_SIMCLR).eval()
    v = two_view_batch(b=5).views[0]
    same = ViewBatch(views=(v, v.clone()), names=("view0", "view1"), kind="two_view", **_bookkeeping(5))
    logs = m(same).logs
    # identical views: the positive is the anchor itself (cos 1), strictly above every other image
    assert close(logs["pos_sim"], 1.0, 1e-6)
    assert float(logs["pos_acc"]) == 1.0
    z = F.normalize(m.online(v), dim=1)
    sim = z @ z.T
    off = ~torch.eye(5, dtype=torch.bool)
    # the negatives of anchor i: the other 4 images, each twice (once per view)
    assert close(logs["neg_sim"], sim[off].mean(), 1e-6)

    # view 1 of image i is view 0 of image i + 1: each anchor meets its own copy as a negative
    rolled = ViewBatch(views=(v, v.roll(-1, 0)), names=("view0", "view1"), kind="two_view", **_bookkeeping(5))
    logs = m(rolled).logs
    assert float(logs["pos_acc"]) == 0.0
    # the positive of image i's anchors is image i + 1 (both directions): cos(z_i, z_{i+1})
    assert close(logs["pos_sim"], sim[torch.arange(5), (torch.arange(5) + 1) % 5].mean(), 1e-6)


# ------------------------------------------------------------------------------------ 2. MoCo

@pytest.mark.parametrize("name", ["moco_v1", "moco_v2"])
def test_moco_loss_uses_the_queue_before_the_step_then_enqueues_the_keys(name):
    m = build(name, **TINY_MOCO, shuffle_bn=False).train()
    assert m.config.head == ("linear" if name == "moco_v1" else "mlp")
    for step in range(2):                        # the second step starts at pointer 4
        batch = two_view_batch(b=4, seed=step)
        before = m.queue.keys.clone()
        pointer = int(m.queue.pointer)
        assert pointer == 4 * step
        q = m.online(batch.views[0])
        k = m.key_encoder(batch.views[1])
        out = m(batch)
        assert close(out.loss, info_nce(q, k, before, m.config.temperature, normalize=False), 1e-12)
        after = m.queue.keys
        # the keys went in at the old pointer, after the loss; nothing else moved
        assert close(after[pointer:pointer + 4], k, 1e-12)
        rest = torch.ones(16, dtype=torch.bool)
        rest[pointer:pointer + 4] = False
        assert torch.equal(after[rest], before[rest])
        assert int(m.queue.pointer) == pointer + 4
        # had the keys been their own negatives, the loss would differ
        assert not close(out.loss, info_nce(q, k, after, m.config.temperature, normalize=False), 1e-6)
        # logs: cosine of each query with its key, and with the queue before the step
        assert close(out.logs["pos_sim"], (q * k).sum(1).mean(), 1e-6)
        assert close(out.logs["neg_sim"], (q @ before.T).mean(), 1e-6)
    # queries and keys are unit vectors (the cosine logits of MoCo)
    assert close(q.norm(dim=1), torch.ones(4), 1e-12)


def test_moco_pointer_wraps_around_the_queue():
    m = build("moco_v2", **{**TINY_MOCO, "queue": 8}, shuffle_bn=False).train()
    for step in range(3):
        m(two_view_batch(b=4, seed=step))
    assert int(m.queue.pointer) == 4               # 0 -> 4 -> 0 -> 4


def test_moco_symmetric_enqueues_both_views_and_averages_both_directions():
    m = build("moco_v2", **TINY_MOCO, shuffle_bn=False, symmetric=True).train()
    batch = two_view_batch(b=4)
    before = m.queue.keys.clone()
    q0, q1 = _cat_forward(m.online, list(batch.views))            # the queries in one forward
    k0, k1 = m.key_encoder(batch.views[0]), m.key_encoder(batch.views[1])
    out = m(batch)
    t = m.config.temperature
    expected = (info_nce(q0, k1, before, t, normalize=False) + info_nce(q1, k0, before, t, normalize=False)) / 2
    assert close(out.loss, expected, 1e-12)
    assert int(m.queue.pointer) == 8
    assert close(m.queue.keys[:8], torch.cat([k0, k1]), 1e-12)
    assert torch.equal(m.queue.keys[8:], before[8:])


def test_moco_one_process_shuffle_bn_computes_keys_in_shuffled_groups():
    batch = two_view_batch(b=8)
    x = batch.views[1]
    m = build("moco_v2", **{**TINY_MOCO, "queue": 16}).train()   # bn_splits = 2
    net = m.key_encoder
    plain = net(x)

    torch.manual_seed(1234)
    m(batch)
    keys = m.queue.keys[:8].clone()

    # the documented procedure: a random permutation from the global RNG, min(bn_splits, B // 2)
    # groups, each its own BatchNorm batch, then the original order back
    torch.manual_seed(1234)
    order = torch.randperm(8)
    groups = torch.cat([net(part) for part in x[order].tensor_split(2)])
    expected = groups[torch.argsort(order)]
    assert close(keys, expected, 1e-12)
    assert not close(keys, plain, 1e-4)           # the shuffle changed the statistics

    # without shuffle-BN (or in eval mode) the keys are the plain key-encoder outputs
    m2 = build("moco_v2", **{**TINY_MOCO, "queue": 16}, shuffle_bn=False).train()
    m2(batch)
    assert close(m2.queue.keys[:8], plain, 1e-12)
    m3 = build("moco_v2", **{**TINY_MOCO, "queue": 16}).eval()
    m3(batch)
    assert close(m3.queue.keys[:8], m3.key_encoder(x), 1e-12)


def test_moco_after_step_moves_the_key_encoder_by_momentum():
    m = build("moco_v1", **TINY_MOCO, momentum=0.9).train()
    with torch.no_grad():                          # make online and key encoder differ
        for p in m.online.parameters():
            p.add_(torch.randn_like(p))
    m(two_view_batch(b=4))                         # changes the online BatchNorm statistics
    t0 = [p.clone() for p in m.key_encoder.parameters()]
    o = [p.clone() for p in m.online.parameters()]
    assert m.after_step(0, 10) == {}
    assert not all(torch.equal(a, b) for a, b in zip(t0, o))        # the update is not trivial
    for t_new, t_old, on in zip(m.key_encoder.parameters(), t0, o):
        assert close(t_new, 0.9 * t_old + 0.1 * on, 1e-13)
    for tb, ob in zip(m.key_encoder.buffers(), m.online.buffers()):
        assert torch.equal(tb, ob)                 # BatchNorm statistics are copied


def test_moco_queue_not_a_multiple_of_the_batch_raises():
    m = build("moco_v2", **{**TINY_MOCO, "queue": 10}, shuffle_bn=False).train()
    before = m.queue.keys.clone()
    with pytest.raises(ValueError, match=r"queue size 10 is not a multiple of the 4 keys enqueued per step"):
        m(two_view_batch(b=4))
    assert torch.equal(m.queue.keys, before) and int(m.queue.pointer) == 0
    # symmetric: both views' keys go in, so the queue must hold a multiple of 2B
    m = build("moco_v2", **{**TINY_MOCO, "queue": 12}, shuffle_bn=False, symmetric=True).train()
    with pytest.raises(ValueError, match="not a multiple of the 8 keys enqueued per step"):
        m(two_view_batch(b=4))


# ------------------------------------------------------------------------------------ 3. BYOL

TINY_BYOL = dict(backbone="tiny", hidden=16, dim=8, predictor_hidden=16)


def test_byol_loss_is_the_symmetrised_regression_of_its_networks_one_view_at_a_time():
    """Each view goes through BatchNorm on its own, as BYOL's reference code runs them (issue 22:
    one BatchNorm batch of both views let each view's statistics carry the other's content)."""
    m = build("byol", **TINY_BYOL).train()
    batch = two_view_batch(b=4)
    (v1, v2) = batch.views
    p1, p2 = (m.predictor(m.online(v)) for v in (v1, v2))
    z1, z2 = (m.target(v) for v in (v1, v2))
    out = m(batch)
    assert close(out.loss, byol(p1, p2, z1, z2), 1e-12)
    # at init the target equals the online network: prediction vs projection, not trivially 0
    assert float(out.loss.detach()) > 1e-3
    # and it is not the joint batch's loss (the statistics differ, so the check above can fail)
    joint_p = _cat_forward(lambda x: m.predictor(m.online(x)), [v1, v2])
    joint_z = _cat_forward(m.target, [v1, v2])
    assert not close(out.loss, byol(*joint_p, *joint_z), 1e-6)
    # the paper's setting can still be switched off
    shared = build("byol", **TINY_BYOL, per_view_bn=False).train()
    shared.load_state_dict(m.state_dict())
    p = _cat_forward(lambda x: shared.predictor(shared.online(x)), [v1, v2])
    z = _cat_forward(shared.target, [v1, v2])
    assert close(shared(batch).loss, byol(*p, *z), 1e-12)


def test_byol_after_step_follows_the_cosine_momentum():
    m = build("byol", **TINY_BYOL).train()
    with torch.no_grad():
        for p in m.online.parameters():
            p.add_(0.1 * torch.randn_like(p))
    t0 = [p.clone() for p in m.target.parameters()]
    o = [p.clone() for p in m.online.parameters()]
    logs = m.after_step(3, 10)
    mom = byol_momentum(3, 10, 0.996)
    assert mom == pytest.approx(1 - 0.004 * (math.cos(math.pi * 0.3) + 1) / 2, abs=1e-15)
    assert logs["momentum"] == pytest.approx(mom, abs=1e-15)
    for t_new, t_old, on in zip(m.target.parameters(), t0, o):
        assert close(t_new, mom * t_old + (1 - mom) * on, 1e-13)
    # the last step: momentum 1, the target stays where it is
    t1 = [p.clone() for p in m.target.parameters()]
    assert m.after_step(10, 10)["momentum"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(m.target.parameters(), t1))


def test_byol_target_gets_no_gradient():
    m = build("byol", **TINY_BYOL).train()
    m(two_view_batch(b=4)).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.target.parameters())
    assert all(p.grad is not None for p in m.predictor.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.online.parameters())


# ------------------------------------------------------------------------------------ 4. InstDisc

TINY_INSTDISC = dict(backbone="tiny", dim=8, negatives=16)


def one_view(batch):
    return ViewBatch(views=batch.views[:1], names=batch.names[:1], kind="two_view", index=batch.index,
                     label=batch.label, valid=batch.valid)


def test_instdisc_log_z_loss_and_bank_update():
    m = build("instdisc", **TINY_INSTDISC, num_samples=64).train()
    t, n = m.config.temperature, 64
    assert torch.isnan(m.log_z_value)
    index = torch.tensor([3, 17, 40, 63])
    batch = one_view(two_view_batch(b=4, index=index))
    x = batch.views[0]
    bank0 = m.bank.bank.clone()
    f = m.online(x)

    torch.manual_seed(5)
    out = m(batch)
    torch.manual_seed(5)
    drawn = torch.randint(n, (16,))                 # the method's draw, from the global RNG
    keep = drawn[None, :] != index[:, None]         # a sample's own row is not its noise
    neg = f @ bank0[drawn].T
    pos = (f * bank0[index]).sum(1)
    log_z = nce_log_z(neg, t, n, keep)
    assert close(m.log_z_value, log_z, 1e-12)
    assert close(out.loss, nce(pos, neg, log_z, t, n - 1, keep), 1e-12)     # noise from the n - 1 others
    # the bank rows of the batch moved half-way to the features; the others did not move
    assert close(m.bank.bank[index], F.normalize(0.5 * bank0[index] + 0.5 * f, dim=1), 1e-12)
    others = torch.ones(n, dtype=torch.bool)
    others[index] = False
    assert torch.equal(m.bank.bank[others], bank0[others])

    # a second step keeps Z and uses it
    log_z1 = m.log_z_value.clone()
    batch2 = one_view(two_view_batch(b=4, seed=9, index=[0, 1, 2, 3]))
    bank1 = m.bank.bank.clone()
    f2 = m.online(batch2.views[0])
    torch.manual_seed(6)
    out2 = m(batch2)
    assert torch.equal(m.log_z_value, log_z1)
    torch.manual_seed(6)
    drawn2 = torch.randint(n, (16,))
    keep2 = drawn2[None, :] != torch.arange(4)[:, None]
    neg2 = f2 @ bank1[drawn2].T
    pos2 = (f2 * bank1[:4]).sum(1)
    assert close(out2.loss, nce(pos2, neg2, log_z1, t, n - 1, keep2), 1e-12)
    assert not close(log_z1, nce_log_z(neg2, t, n, keep2), 1e-6)   # re-estimating would differ


def test_instdisc_and_moco_heads_with_batch_norm():
    """Issue 22's small-image heads: InstDisc's mlp_bn (Linear-BN-ReLU-Linear, normalised output)
    and MoCo's mlp_bn; unknown heads are refused by name."""
    m = build("instdisc", **TINY_INSTDISC, head="mlp_bn", hidden=12, num_samples=64).train()
    head = m.online.head
    assert [type(x) for x in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].out_features == 12 and head[3].out_features == 8
    x = torch.randn(4, 3, 16, 16, dtype=D64)
    f = m.online(x)
    assert close(f, F.normalize(head(m.online.backbone(x)), dim=1), 1e-12)
    assert m.projection_head is head
    with pytest.raises(MethodError, match="head = 'mlp'; choose linear or mlp_bn"):
        build("instdisc", **TINY_INSTDISC, head="mlp", num_samples=64)
    pirl = build("pirl", backbone="tiny", dim=8, negatives=16, head="mlp_bn", hidden=12, num_samples=32)
    assert [type(x) for x in pirl.image_head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert pirl.projection_head is pirl.image_head
    moco = build("moco_v2", backbone="tiny", hidden=16, dim=8, queue=16, head="mlp_bn")
    assert any(isinstance(x, nn.BatchNorm1d) for x in moco.online.head.modules())
    assert not any(isinstance(x, nn.BatchNorm1d) for x in build("moco_v2", backbone="tiny", hidden=16, dim=8,
                                                                   queue=16).online.head.modules())
    with pytest.raises(MethodError, match="choose linear, mlp or mlp_bn"):
        build("moco_v2", backbone="tiny", queue=16, head="bn")


def test_instdisc_bank_momentum_weights_the_old_entry():
    m = build("instdisc", **TINY_INSTDISC, num_samples=16, bank_momentum=0.8).train()
    batch = one_view(two_view_batch(b=4, index=[1, 2, 3, 4]))
    bank0 = m.bank.bank.clone()
    f = m.online(batch.views[0])
    m(batch)
    assert close(m.bank.bank[1:5], F.normalize(0.8 * bank0[1:5] + 0.2 * f, dim=1), 1e-12)


def instdisc_step(**options):
    """One InstDisc step on 4 samples of a 64-entry bank, the noise drawn under seed 5 (the
    reference draws again after ``torch.manual_seed(5)``): (method, output, features, bank
    before the step, index)."""
    m = build("instdisc", **TINY_INSTDISC, num_samples=64, **options).train()
    index = torch.tensor([3, 17, 40, 63])
    batch = one_view(two_view_batch(b=4, index=index))
    bank0 = m.bank.bank.clone()
    f = m.online(batch.views[0])
    torch.manual_seed(5)
    out = m(batch)
    torch.manual_seed(5)
    return m, out, f, bank0, index


def test_instdisc_per_sample_negatives():
    m, out, f, bank0, index = instdisc_step(shared_negatives=False)
    drawn = torch.randint(63, (4, 16))                               # one draw per sample, of the 63 others:
    drawn = drawn + (drawn >= index[:, None])                        # the own row skipped
    neg = torch.einsum("bd,bmd->bm", f, bank0[drawn])
    t = m.config.temperature
    log_z = nce_log_z(neg, t, 64)
    assert close(m.log_z_value, log_z, 1e-12)
    assert close(out.loss, nce((f * bank0[index]).sum(1), neg, log_z, t, 63), 1e-12)


def softmax_reference(pos, neg, t, keep=None):
    """-log(exp(pos / t) / (exp(pos / t) + sum_j exp(neg_j / t))), averaged, written out in float64;
    the sum over the kept j only."""
    pos, neg = pos.double(), neg.double()
    e = torch.exp(neg / t) * (1.0 if keep is None else keep.double())
    return (-(pos / t) + torch.log(torch.exp(pos / t) + e.sum(1))).mean()


def test_instdisc_softmax_loss_is_the_non_parametric_softmax_and_needs_no_z():
    m, out, f, bank0, index = instdisc_step(loss="softmax")
    drawn = torch.randperm(64)[:16]                 # without replacement: each row at most once
    keep = drawn[None, :] != index[:, None]
    neg = f @ bank0[drawn].T
    pos = (f * bank0[index]).sum(1)
    t = m.config.temperature
    assert close(out.loss, softmax_reference(pos, neg, t, keep), 1e-12)
    assert not close(out.loss, nce(pos, neg, nce_log_z(neg, t, 64), t, 64), 1e-3)
    assert torch.isnan(m.log_z_value)                   # no Z is estimated or used
    assert close(m.bank.bank[index], F.normalize(0.5 * bank0[index] + 0.5 * f, dim=1), 1e-12)


def test_memory_bank_methods_refuse_an_unknown_loss_by_name():
    for name, tiny in (("instdisc", TINY_INSTDISC), ("pirl", TINY_PIRL)):
        with pytest.raises(MethodError, match="loss must be 'nce' or 'softmax', got 'infonce'"):
            get_method(name)(**tiny, num_samples=8, loss="infonce")


def test_instdisc_index_outside_the_bank_raises_index_error():
    m = build("instdisc", **TINY_INSTDISC, num_samples=8).train()
    for bad in ([0, 1, 2, 8], [0, -1, 2, 3]):
        with pytest.raises(IndexError, match="outside the memory bank of 8"):
            m(one_view(two_view_batch(b=4, index=bad)))
    assert torch.isnan(m.log_z_value)               # nothing was estimated from the bad step


def test_instdisc_needs_num_samples():
    with pytest.raises(MethodError, match="num_samples"):
        get_method("instdisc")(**TINY_INSTDISC)


def test_instdisc_reads_exactly_one_view():
    m = build("instdisc", **TINY_INSTDISC, num_samples=8)
    with pytest.raises(MethodError, match="exactly 1 image views"):
        m(two_view_batch(b=4))


# ------------------------------------------------------------------------------------ 5. PIRL

TINY_PIRL = dict(backbone="tiny", dim=8, negatives=16)


def test_pirl_loss_is_the_weighted_sum_of_its_two_nce_terms():
    batch = jigsaw_batch(b=4, index=[1, 5, 9, 30])
    base = build("pirl", **TINY_PIRL, num_samples=32).train()
    state = copy.deepcopy(base.state_dict())
    runs = {}
    for w in (1.0, 0.0, 0.5):
        m = get_method("pirl")(**TINY_PIRL, num_samples=32, jigsaw_weight=w).to(D64).train()
        m.load_state_dict(state)
        torch.manual_seed(3)
        runs[w] = m(batch)
    lj, li = runs[0.5].logs["loss_jigsaw"], runs[0.5].logs["loss_image"]
    for out in runs.values():                       # the weight does not change the two terms
        assert close(out.logs["loss_jigsaw"], lj, 1e-12) and close(out.logs["loss_image"], li, 1e-12)
    assert close(runs[1.0].loss, lj, 1e-12)
    assert close(runs[0.0].loss, li, 1e-12)
    assert close(runs[0.5].loss, 0.5 * lj + 0.5 * li, 1e-12)
    assert not close(lj, li, 1e-6)

    # each term is InstDisc's NCE of its branch against the bank entry and shared noise
    m = base
    image, patches = batch.views
    bank0 = m.bank.bank.clone()
    f = F.normalize(m.image_head(m.backbone(image)), dim=1)
    per_patch = m.patch_head(m.backbone(patches.flatten(0, 1)))
    g = F.normalize(m.jigsaw_head(per_patch.reshape(4, 9 * 8)), dim=1)
    torch.manual_seed(3)
    drawn = {"g": torch.randint(32, (16,)), "f": torch.randint(32, (16,))}      # a draw per term
    t = m.config.temperature
    memory = bank0[batch.index]
    neg = {name: z @ bank0[drawn[name]].T for z, name in ((g, "g"), (f, "f"))}
    keep = {name: drawn[name][None, :] != batch.index[:, None] for name in drawn}
    # one Z for both terms (VISSL's PIRL), from both terms' noise on the first batch
    log_z = nce_log_z(torch.cat([neg["g"], neg["f"]]), t, 32, torch.cat([keep["g"], keep["f"]]))
    for z, term, name in ((g, lj, "g"), (f, li, "f")):
        assert close(term, nce((z * memory).sum(1), neg[name], log_z, t, 31, keep[name]), 1e-12)
    # the bank follows the image branch
    m(batch)
    assert close(m.bank.bank[batch.index], F.normalize(0.5 * memory + 0.5 * f, dim=1), 1e-12)
    assert not torch.isnan(m.log_z_value)
    seeded = get_method("pirl")(**TINY_PIRL, num_samples=32).to(D64).train()
    seeded.load_state_dict(state)
    torch.manual_seed(3)
    seeded(batch)
    assert close(seeded.log_z_value, log_z, 1e-12)


def test_pirl_softmax_loss_scores_both_branches_with_the_softmax():
    batch = jigsaw_batch(b=4, index=[1, 5, 9, 30])
    m = build("pirl", **TINY_PIRL, num_samples=32, loss="softmax").train()
    image, patches = batch.views
    bank0 = m.bank.bank.clone()
    f = F.normalize(m.image_head(m.backbone(image)), dim=1)
    g = F.normalize(m.jigsaw_head(m.patch_head(m.backbone(patches.flatten(0, 1))).reshape(4, 9 * 8)), dim=1)
    torch.manual_seed(3)
    out = m(batch)
    torch.manual_seed(3)
    dg, df = torch.randperm(32)[:16], torch.randperm(32)[:16]
    memory, t = bank0[batch.index], m.config.temperature
    own = batch.index[:, None]
    lj = softmax_reference((g * memory).sum(1), g @ bank0[dg].T, t, dg[None, :] != own)
    li = softmax_reference((f * memory).sum(1), f @ bank0[df].T, t, df[None, :] != own)
    assert close(out.logs["loss_jigsaw"], lj, 1e-12) and close(out.logs["loss_image"], li, 1e-12)
    assert close(out.loss, 0.5 * lj + 0.5 * li, 1e-12)
    assert torch.isnan(m.log_z_value)


def test_pirl_needs_nine_patches():
    m = build("pirl", **TINY_PIRL, num_samples=32)
    with pytest.raises(MethodError, match="9 jigsaw patches.*got 4"):
        m(jigsaw_batch(b=4, cells=4))


# ------------------------------------------------------------------------------------ 6. CPC

@pytest.mark.parametrize("name", ["cpc_v1", "cpc_v2"])
def test_cpc_loss_is_the_mean_over_directions_of_cpc_skipping_the_overlapping_row(name):
    """Issue 22: the row next to the context overlaps it (patches at half their size's stride),
    so CPC predicts from two rows ahead (skip = 1), as Greedy InfoMax and pl_bolts do."""
    m = build(name, backbone="tiny", steps=2, context_layers=1, predict_init="random").train()
    assert m.config.skip == 1
    batch = cpc_batch(b=2, grid=4, patch=16)
    out = m(batch)
    patches = batch.views[0]
    grid = m.backbone(patches.flatten(0, 2)).reshape(2, 4, 4, -1)
    directions = m.context(grid)
    assert len(directions) == (1 if name == "cpc_v1" else 4)
    for preds, _ in directions:      # rows 0..1 predict row +2, row 0 predicts row +3
        assert [tuple(p.shape[:2]) for p in preds] == [(2, 2), (2, 1)]
    per = [cpc(p, t, m.config.temperature, skip=1) for p, t in directions]
    assert close(out.loss, torch.stack(per).mean(), 1e-12)
    if len(per) > 1:
        assert not close(out.loss, per[0], 1e-6)
    # the prediction at context row i is scored against row i + 2: the first step, by hand
    preds, targets = directions[0]
    d = targets.shape[-1]
    flat = targets.reshape(-1, d)
    logits = preds[0].reshape(-1, d) @ flat.T / m.config.temperature
    cells = torch.arange(flat.shape[0]).reshape(2, 4, 4)
    want = (torch.logsumexp(logits, 1) - logits[torch.arange(len(logits)), cells[:, 2:].reshape(-1)]).mean()
    assert close(cpc(preds[:1], targets, m.config.temperature, skip=1), want, 1e-12)


@pytest.mark.parametrize("name", ["cpc_v1", "cpc_v2"])
def test_cpc_starts_from_zero_predictions_so_the_encoder_is_not_pushed_to_collapse(name):
    """Issue 22: with random prediction maps the first scores are noise, and the quickest way to
    lower that loss is to give every patch one embedding (the digits run collapsed in its first
    epoch and escaped after 16 to 33 epochs, by seed). From zero maps, every score is 0, the loss
    is log N for the N patches of the batch, the maps get a gradient and the encoder none."""
    batch = cpc_batch(b=2, grid=4, patch=16)
    m = build(name, backbone="tiny", steps=2, context_layers=1).train()
    assert m.config.predict_init == "zero"
    out = m(batch)
    out.loss.backward()
    assert close(out.loss, math.log(2 * 4 * 4), 1e-12)
    assert all(p.grad is None or not p.grad.any() for p in m.backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 1e-8 for p in m.context.predict.parameters())
    r = build(name, backbone="tiny", steps=2, context_layers=1, predict_init="random").train()
    out = r(batch)
    out.loss.backward()
    assert not close(out.loss, math.log(2 * 4 * 4), 1e-6)
    assert any(p.grad is not None and p.grad.abs().max() > 1e-8 for p in r.backbone.parameters())
    with pytest.raises(MethodError, match="predict_init must be one of zero, random, got 'gaussian'"):
        build(name, backbone="tiny", predict_init="gaussian")


def test_cpc_refuses_a_grid_whose_first_predicted_row_overlaps_the_context():
    from clvr.methods.train_config import ConfigError
    cls = get_method("cpc_v2")
    config = cls.make_config(backbone="tiny")
    cls.check_training(config, 8, 1, {"side": 32, "grid": 3, "patch": 16, "stride": 8})  # 16 px at 2 rows: no overlap
    with pytest.raises(ConfigError, match="model.skip to at least 2"):
        cls.check_training(cls.make_config(backbone="tiny", skip=0), 8, 1,
                           {"side": 32, "grid": 3, "patch": 16, "stride": 6})
    with pytest.raises(ConfigError, match="overlap the context's last row 1 row"):
        cls.check_training(cls.make_config(backbone="tiny", skip=0), 8, 1, {"side": 32, "grid": 3, "patch": 16, "stride": 8})
    with pytest.raises(ConfigError, match="grid = 2 leaves no row to predict"):
        cls.check_training(config, 8, 1, {"side": 32, "grid": 2, "patch": 16, "stride": 16})


def test_cpc_v2_defaults_use_layer_norm_and_four_directions():
    c = get_method("cpc_v2").Config()
    assert (c.norm, c.directions) == ("layer", 4)
    m = build("cpc_v2", backbone="tiny", steps=2, context_layers=1)
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())
    assert any(isinstance(mod, nn.GroupNorm) for mod in m.backbone.modules())
    assert len(m.context.context) == 4


def test_cpc_v1_has_no_normalisation_layers():
    c = get_method("cpc_v1").Config()
    assert (c.norm, c.directions) == ("none", 1)
    m = build("cpc_v1", backbone="tiny", steps=2, context_layers=1)
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not any(isinstance(mod, norms) for mod in m.modules())


# ------------------------------------------------------------------------------------ 7. ObjectContrast

TINY_OBJ = dict(backbone="tiny", hidden=16, dim=8)


def test_object_contrast_loss_is_pairwise_info_nce_with_same_box_picks_not_negatives():
    # image 0 has 2 boxes for K = 3 picks: box 0 was picked twice
    batch = object_batch(b=2, k=3, source=[[0, 0, 1], [0, 1, 2]], index=[7, 11])
    m = build("object_contrast", **TINY_OBJ).train()
    out = m(batch)
    objects = batch.views[0]
    za, zb = _cat_forward(m.online, [objects[:, :, 0].flatten(0, 1), objects[:, :, 1].flatten(0, 1)])
    # one id per (parent image, box row), from the batch's extras
    group = (batch.extras["parent"] * 1000 + batch.extras["source"]).flatten()
    valid = batch.extras["mask"].flatten()
    t = m.config.temperature
    expected = pairwise_info_nce(za, zb, t, valid=valid, group=group)
    assert close(out.loss, expected, 1e-12)
    # had the two picks of box 0 been each other's negatives, the loss would differ
    assert not close(out.loss, pairwise_info_nce(za, zb, t, valid=valid), 1e-6)
    # with distinct boxes everywhere, nothing is masked
    distinct = object_batch(b=2, k=3, index=[7, 11])
    out2 = m(distinct)
    za2, zb2 = _cat_forward(m.online, [distinct.views[0][:, :, 0].flatten(0, 1),
                                       distinct.views[0][:, :, 1].flatten(0, 1)])
    assert close(out2.loss, pairwise_info_nce(za2, zb2, t), 1e-12)


@pytest.mark.parametrize("image_weight", [0.0, 0.5])
def test_object_contrast_masked_objects_do_not_matter(image_weight):
    mask = [[True, True, False], [True, True, True]]
    batch = object_batch(b=2, k=3, mask=mask)
    m = build("object_contrast", **TINY_OBJ, image_weight=image_weight).eval()   # no BatchNorm coupling
    loss = m(batch).loss
    changed = copy.copy(batch)
    objects = batch.views[0].clone()
    objects[0, 2] = torch.randn_like(objects[0, 2]) * 5
    changed.views = (objects,)
    assert close(m(changed).loss, loss, 1e-12)
    objects = batch.views[0].clone()
    objects[0, 1] = torch.randn_like(objects[0, 1]) * 5             # a real object: it matters
    changed.views = (objects,)
    assert not close(m(changed).loss, loss, 1e-6)


def test_object_contrast_image_weight_adds_the_image_level_term():
    mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    batch = object_batch(b=3, k=3, mask=mask)
    m0 = build("object_contrast", **TINY_OBJ).eval()
    m1 = build("object_contrast", **TINY_OBJ, image_weight=0.5).eval()
    out0, out1 = m0(batch), m1(batch)
    assert "loss_image" not in out0.logs
    objects = batch.views[0]
    za, zb = m1.online(objects[:, :, 0].flatten(0, 1)), m1.online(objects[:, :, 1].flatten(0, 1))
    w = mask.to(D64)[:, :, None]
    ia = (za.reshape(3, 3, -1) * w).sum(1) / w.sum(1)
    ib = (zb.reshape(3, 3, -1) * w).sum(1) / w.sum(1)
    image_loss = pairwise_info_nce(ia, ib, m1.config.temperature)
    assert close(out1.logs["loss_image"], image_loss, 1e-12)
    assert close(out1.loss, out0.loss + 0.5 * image_loss, 1e-12)


# ------------------------------------------------------------------------------------ 8. CLIP

TINY_CLIP = dict(backbone="tiny", text="bytes_tiny", dim=8, text_length=24)


def test_clip_loss_is_symmetric_pairwise_info_nce_with_a_learnable_temperature():
    m = build("clip", **TINY_CLIP).train()
    batch = image_text_batch(b=4)
    t = m.temperature()
    assert close(t, 0.07, 1e-8)                     # initialised from 0.07 (as a float32 parameter)
    out = m(batch)
    zi, zt = m.image(batch.views[0]), m.text(batch.text)
    assert close(out.loss, pairwise_info_nce(zi, zt, t), 1e-12)
    assert close(out.logs["temperature"], t, 1e-12)
    out.loss.backward()
    assert m.logit_scale.grad is not None and float(m.logit_scale.grad.abs()) > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.text.parameters())


def test_clip_temperature_is_clamped_at_min_temperature():
    m = build("clip", **TINY_CLIP, min_temperature=0.02).train()
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1 / 0.001))
    batch = image_text_batch(b=4)
    assert close(m.temperature(), 0.02, 1e-12)
    out = m(batch)
    zi, zt = m.image(batch.views[0]), m.text(batch.text)
    assert close(out.loss, pairwise_info_nce(zi, zt, 0.02), 1e-12)
    assert close(out.logs["temperature"], 0.02, 1e-12)
    # above the bound the forward's clamp has no gradient; after_step brings the parameter back
    out.loss.backward()
    assert float(m.logit_scale.grad) == 0.0
    m.after_step(0, 10)
    assert close(m.logit_scale, math.log(1 / 0.02), 1e-12)
    out = m(batch)
    out.loss.backward()
    assert float(m.logit_scale.grad) != 0.0, "at the bound the temperature learns again"


@pytest.mark.parametrize("text", [None, CAPTIONS[:3]])
def test_clip_needs_one_caption_per_image(text):
    m = build("clip", **TINY_CLIP)
    with pytest.raises(MethodError, match="one caption per image"):
        m(image_text_batch(b=4, text=text))


# ------------------------------------------------------------------------------------ 9. video

@pytest.mark.parametrize("backbone", ["frames:tiny", "r2plus1d_tiny"])
def test_video_simclr_three_clips_is_the_mean_over_pairs(backbone):
    m = build("video_simclr", backbone=backbone, hidden=16, dim=8).train()
    batch = video_batch(b=2, rho=3, frames=2)
    out = m(batch)
    clips = list(batch.views[0].unbind(1))
    z = _cat_forward(m.online, clips)                # the 3 clips in one forward
    expected = torch.stack([nt_xent(z[i], z[j], m.config.temperature) for i, j in pairs(3)]).mean()
    assert close(out.loss, expected, 1e-12)
    assert not close(out.loss, nt_xent(z[0], z[1], m.config.temperature), 1e-6)


def test_video_moco_first_clip_queries_every_other_clip():
    m = build("video_moco", backbone="frames:tiny", hidden=16, dim=8, queue=16, shuffle_bn=False).train()
    batch = video_batch(b=2, rho=3, frames=2)
    before = m.queue.keys.clone()
    c0, c1, c2 = batch.views[0].unbind(1)
    q, k1, k2 = m.online(c0), m.key_encoder(c1), m.key_encoder(c2)
    out = m(batch)
    t = m.config.temperature
    expected = (info_nce(q, k1, before, t, normalize=False) + info_nce(q, k2, before, t, normalize=False)) / 2
    assert close(out.loss, expected, 1e-12)
    assert close(m.queue.keys[:4], torch.cat([k1, k2]), 1e-12) and int(m.queue.pointer) == 4


@pytest.mark.parametrize("name", ["video_simclr", "video_moco", "video_byol"])
def test_video_methods_need_two_clips(name):
    m = build(name, backbone="frames:tiny", dim=8, hidden=16)
    with pytest.raises(MethodError, match="clips"):
        m(video_batch(b=2, rho=1, frames=2))


# ------------------------------------------------------------------------------------ 10. base class

def test_padding_samples_are_dropped_on_one_process():
    m = build("simclr", **TINY_SIMCLR).train()
    batch = two_view_batch(b=6)
    batch.valid = torch.tensor([True, True, False, True, False, True])
    kept = two_view_batch(b=6).select(batch.valid)
    assert len(kept) == 4
    padded_loss = m(batch).loss
    assert close(padded_loss, m(kept).loss, 1e-12)
    assert not close(padded_loss, m(two_view_batch(b=6)).loss, 1e-6)


def test_padding_is_dropped_with_its_captions():
    m = build("clip", **TINY_CLIP).eval()
    batch = image_text_batch(b=5)
    batch.valid = torch.tensor([True, False, True, True, False])
    kept = image_text_batch(b=5).select(batch.valid)
    assert kept.text == [CAPTIONS[0], CAPTIONS[2], CAPTIONS[3]]
    assert close(m(batch).loss, m(kept).loss, 1e-12)


def test_only_padding_raises():
    m = build("simclr", **TINY_SIMCLR)
    batch = two_view_batch(b=4)
    batch.valid = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(MethodError, match="only padding"):
        m(batch)


def test_configs_are_strict():
    with pytest.raises(MethodError, match="unknown key 'tempreature'.*did you mean 'temperature'"):
        get_method("simclr")(backbone="tiny", tempreature=0.2)
    with pytest.raises(MethodError, match=r"temperature = 0.0 must be positive"):
        get_method("moco_v2")(backbone="tiny", temperature=0.0)
    with pytest.raises(MethodError, match="config.temperature: expected a number"):
        get_method("simclr")({"backbone": "tiny", "temperature": "x"})


def test_simclr_fed_a_jigsaw_batch_says_what_it_got():
    m = build("simclr", **TINY_SIMCLR)
    with pytest.raises(MethodError) as e:
        m(jigsaw_batch(b=4))
    msg = str(e.value)
    for part in ("simclr", "jigsaw", "image (4, 3, 16, 16)", "patches (4, 9, 3, 8, 8)", "two_view"):
        assert part in msg, (part, msg)


def _roundtrip_case(name):
    if name == "moco_v2":
        return dict(backbone="tiny", hidden=16, dim=8, queue=16, bn_splits=2), {}, lambda s: two_view_batch(4, seed=s)
    if name == "instdisc":
        return (dict(backbone="tiny", dim=8, negatives=16), {"num_samples": 32},
                lambda s: one_view(two_view_batch(4, seed=s, index=[4 * s, 4 * s + 1, 4 * s + 2, 4 * s + 3])))
    if name == "byol":
        return TINY_BYOL, {}, lambda s: two_view_batch(4, seed=s)
    return TINY_CLIP, {}, lambda s: image_text_batch(4, seed=s)


def _train_step(m, batch, step, seed):
    """Loss, backward, plain SGD (stateless, so the optimiser needs no saving), momentum update."""
    torch.manual_seed(seed)
    out = m(batch)
    m.zero_grad()
    out.loss.backward()
    with torch.no_grad():
        for p in m.parameters():
            if p.grad is not None:
                p.sub_(0.05 * p.grad)
    m.after_step(step, 10)
    return out.loss.detach()


@pytest.mark.parametrize("name", ["moco_v2", "instdisc", "byol", "clip"])
def test_state_dict_round_trip_restores_the_state_of_the_method(name):
    config, kw, make = _roundtrip_case(name)
    a = build(name, **config, **kw).train()
    for step in range(2):
        _train_step(a, make(step), step, seed=100 + step)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b = build(name, seed=7, **config, **kw).train()                  # other initial weights
    keys = set(a.state_dict())
    state = {"moco_v2": ("queue.keys", "queue.pointer", "key_encoder.target."),
             "instdisc": ("bank.bank", "log_z_value"), "byol": ("target.target.",),
             "clip": ("logit_scale",)}[name]
    for s in state:
        assert any(k.startswith(s) for k in keys), (s, sorted(keys))
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    batch = make(2)
    la = _train_step(a, batch, 2, seed=200)
    lb = _train_step(b, batch, 2, seed=200)
    assert torch.equal(la, lb)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]) or (torch.isnan(sa[k]).all() and torch.isnan(sb[k]).all()), k
    if name == "moco_v2":
        assert int(sa["queue.pointer"]) == 12
    if name == "instdisc":
        assert not torch.isnan(sa["log_z_value"])

"""Optimisers: LARS against a float64 reference of its documented update, parameter groups,
lr scaling and building by name."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clvr.methods.optimizers import LARS, build_optimizer, parameter_groups, scaled_lr


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.BatchNorm1d(6), nn.Linear(6, 3)).double()


def loss_of(model, k):
    g = torch.Generator().manual_seed(100 + k)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randn(8, 3, generator=g, dtype=torch.float64)
    return ((model(x) - y) ** 2).mean()


LR_FACTORS = (1.0, 0.5, 0.25)       # the lr changes between steps, as under a schedule


def train(model, opt, steps, first=0, factors=None):
    base = [g["lr"] for g in opt.param_groups]
    for k in range(first, first + steps):
        if factors:
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * factors[k]
        opt.zero_grad()
        loss_of(model, k).backward()
        opt.step()


def reference_lars(model, steps, groups, eta, nesterov, factors):
    """The documented update in float64 with plain tensor arithmetic; ``groups`` is a list of
    (parameter names, lr, momentum, weight_decay, exclude); the lr at step k is lr * factors[k]."""
    names = dict(model.named_parameters())
    v = {n: torch.zeros_like(p) for n, p in names.items()}
    for k in range(steps):
        model.zero_grad()
        loss_of(model, k).backward()
        with torch.no_grad():
            for members, base_lr, m, wd, exclude in groups:
                lr = base_lr * factors[k]
                for n in members:
                    w = names[n]
                    g = w.grad.clone()
                    trust = 1.0
                    if not exclude:
                        g = g + wd * w
                        wn, gn = w.norm().item(), g.norm().item()
                        if wn > 0 and gn > 0:
                            trust = eta * wn / gn
                    v[n] = m * v[n] + lr * trust * g
                    w -= (m * v[n] + lr * trust * g) if nesterov else v[n]


def split(model):
    weights = [n for n, p in model.named_parameters() if p.ndim > 1]
    rest = [n for n, p in model.named_parameters() if p.ndim <= 1]
    return weights, rest


def lars_on(model, lr=0.5, m=0.9, wd=0.01, eta=0.02, nesterov=False, exclude_lr=0.3):
    weights, rest = split(model)
    named = dict(model.named_parameters())
    opt = LARS([{"params": [named[n] for n in weights]},
                {"params": [named[n] for n in rest], "lars_exclude": True, "lr": exclude_lr}],
               lr=lr, momentum=m, weight_decay=wd, eta=eta, nesterov=nesterov)
    groups = [(weights, lr, m, wd, False), (rest, exclude_lr, m, wd, True)]
    return opt, groups


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_the_documented_update(nesterov):
    model, ref = small_model(), small_model()
    opt, groups = lars_on(model, nesterov=nesterov)
    train(model, opt, 3, factors=LR_FACTORS)
    reference_lars(ref, 3, groups, eta=0.02, nesterov=nesterov, factors=LR_FACTORS)
    moved = 0
    for (n, a), b, start in zip(model.named_parameters(), ref.parameters(), small_model().parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), n
        moved += not torch.allclose(a, start)
    assert moved == len(list(model.parameters()))


def test_trust_ratio_changes_the_step():
    """The weights' step is not plain SGD's (the trust ratio is applied)."""
    model, sgd_model = small_model(), small_model()
    opt, _ = lars_on(model, wd=0.0)
    train(model, opt, 1)
    train(sgd_model, torch.optim.SGD(sgd_model.parameters(), lr=0.5), 1)
    assert not torch.allclose(model[0].weight, sgd_model[0].weight)


def test_excluded_group_is_sgd_with_momentum_and_no_weight_decay():
    model, sgd_model = small_model(), small_model()
    opt = LARS(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.5, eta=0.001)
    opt.param_groups[0]["lars_exclude"] = True
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.0)
    train(model, opt, 3)
    train(sgd_model, sgd, 3)
    for a, b in zip(model.parameters(), sgd_model.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_zero_weight_or_zero_gradient_uses_trust_one():
    w = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    z = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))
    opt = LARS([w, z], lr=0.1, momentum=0.0, eta=0.001)
    w.grad = torch.full_like(w, 2.0)
    z.grad = torch.zeros_like(z)
    opt.step()
    assert torch.equal(w.detach(), torch.full_like(w, -0.2))       # trust 1: w - lr * g
    assert torch.equal(z.detach(), torch.ones_like(z))
    w.grad = torch.zeros_like(w)                                    # both norms zero
    w.data.zero_()
    opt.step()
    assert torch.isfinite(w).all() and torch.equal(w.detach(), torch.zeros_like(w))


def test_parameters_without_gradient_are_skipped_and_closure_is_called():
    model = small_model()
    opt = LARS(model.parameters(), lr=0.1)
    before = [p.clone() for p in model.parameters()]
    opt.step()                                                      # no gradients yet
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))

    def closure():
        opt.zero_grad()
        loss = loss_of(model, 0)
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert not torch.equal(model[0].weight, before[0])


def test_state_dict_round_trip_continues_identically():
    model, resumed = small_model(), small_model()
    opt, _ = lars_on(model)
    train(model, opt, 5)

    ran, _ = lars_on(resumed)
    train(resumed, ran, 3)
    saved = ran.state_dict()
    fresh, _ = lars_on(resumed)                   # new optimiser over the same parameters
    fresh.load_state_dict(saved)
    assert fresh.param_groups[1]["lars_exclude"] is True
    train(resumed, fresh, 2, first=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad, message", [
    (dict(lr=-0.1), "lr must be >= 0, got -0.1"),
    (dict(lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    (dict(lr=0.1, weight_decay=-1e-6), "weight_decay must be >= 0"),
    (dict(lr=0.1, eta=0.0), "eta must be > 0, got 0.0"),
    (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov=True needs momentum > 0"),
])
def test_lars_validates_its_options(bad, message):
    with pytest.raises(ValueError, match=message):
        LARS(small_model().parameters(), **bad)


def test_lars_validates_group_options():
    model = small_model()
    with pytest.raises(ValueError, match="momentum must be in"):
        LARS([{"params": list(model.parameters()), "momentum": 2.0}], lr=0.1)


def conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 2, bias=False),
                         nn.GroupNorm(1, 2))


def test_parameter_groups_split_norms_and_biases():
    model = conv_model()
    model[0].bias.requires_grad_(False)                             # frozen: left out
    groups = parameter_groups(model, 1e-4, exclude_bn_and_bias=True)
    assert len(groups) == 2
    normal, excluded = groups
    assert normal["weight_decay"] == 1e-4 and "lars_exclude" not in normal
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] is True
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(normal["params"]) == ids([model[0].weight, model[4].weight, model[6].weight])
    assert ids(excluded["params"]) == ids([model[1].weight, model[1].bias, model[4].bias,
                                           model[5].weight, model[5].bias, model[7].weight,
                                           model[7].bias])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(normal["params"]) + len(excluded["params"]) == len(trainable) == 10
    assert id(model[0].bias) not in ids(normal["params"]) | ids(excluded["params"])


def test_parameter_groups_without_exclusion_and_empty_groups():
    model = conv_model()
    (group,) = parameter_groups(model, 0.5, exclude_bn_and_bias=False)
    assert group["weight_decay"] == 0.5 and len(group["params"]) == len(list(model.parameters()))
    (only,) = parameter_groups(nn.BatchNorm1d(3), 0.5, exclude_bn_and_bias=True)
    assert only["lars_exclude"] is True and len(only["params"]) == 2
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert parameter_groups(frozen, 0.5, True) == [] == parameter_groups(frozen, 0.5, False)
    with pytest.raises(ValueError, match="weight_decay must be >= 0, got -1"):
        parameter_groups(model, -1, True)


@pytest.mark.parametrize("batch", [256, 512, 4096])
def test_scaled_lr(batch):
    assert scaled_lr(0.3, batch) == pytest.approx(0.3 * batch / 256, rel=1e-15)
    assert scaled_lr(0.3, batch, "linear") == pytest.approx(0.3 * batch / 256, rel=1e-15)
    assert scaled_lr(0.075, batch, "sqrt") == pytest.approx(0.075 * math.sqrt(batch / 256), rel=1e-15)
    assert scaled_lr(0.03, batch, "none") == 0.03


def test_scaled_lr_values_and_errors():
    assert scaled_lr(0.3, 4096) == pytest.approx(4.8)                # SimCLR: 0.3 x 4096 / 256
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown lr scaling rule 'square'; choose one of linear, sqrt, none"):
        scaled_lr(0.1, 256, "square")
    with pytest.raises(ValueError, match="global_batch must be >= 1, got 0"):
        scaled_lr(0.1, 0)


def test_build_optimizer_types_and_defaults():
    model = conv_model()
    sgd = build_optimizer("sgd", model, lr=0.03, weight_decay=1e-4)
    assert type(sgd) is torch.optim.SGD and len(sgd.param_groups) == 1
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.03, 0.9, False, 1e-4)

    adamw = build_optimizer("adamw", model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6)
    assert type(adamw) is torch.optim.AdamW and len(adamw.param_groups) == 1
    g = adamw.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (1e-3, (0.9, 0.98), 1e-6, 0.05)

    lars = build_optimizer("lars", model, lr=4.8, weight_decay=1e-6)
    assert type(lars) is LARS and len(lars.param_groups) == 2
    normal, excluded = lars.param_groups
    assert (normal["lr"], normal["momentum"], normal["eta"], normal["weight_decay"],
            normal["lars_exclude"], normal["nesterov"]) == (4.8, 0.9, 0.001, 1e-6, False, False)
    assert excluded["lars_exclude"] is True and excluded["weight_decay"] == 0.0

    one = build_optimizer("lars", model, 0.1, 0.0, exclude_bn_and_bias=False)
    assert len(one.param_groups) == 1
    sgd2 = build_optimizer("sgd", model, 0.1, 1e-4, nesterov=True, exclude_bn_and_bias=True)
    assert [g["weight_decay"] for g in sgd2.param_groups] == [1e-4, 0.0]
    assert sgd2.param_groups[0]["nesterov"] is True


@pytest.mark.parametrize("typo, near", [("lasr", "lars"), ("adam", "adamw"), ("SGD", "sgd")])
def test_build_optimizer_unknown_name_suggests_the_nearest(typo, near):
    with pytest.raises(ValueError, match=f"unknown optimizer '{typo}'; choose one of sgd, adamw, "
                                         f"lars; did you mean '{near}'"):
        build_optimizer(typo, conv_model(), 0.1, 0.0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("sgd", nn.Linear(2, 2).requires_grad_(False), 0.1, 0.0)


def test_lr_scales_give_a_module_its_own_multiple_of_the_lr_through_the_schedule():
    """BYOL's predictor_lr: the predictor's groups carry lr x factor, split from the rest of their
    weight-decay group; a LambdaLR then scales every group alike."""
    from clvr.methods.optimizers import build_optimizer
    torch.manual_seed(0)
    body, pred = nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model = nn.Sequential(body, pred)
    for name in ("sgd", "lars"):
        opt = build_optimizer(name, model, 0.1, 1e-4, lr_scales={pred: 10.0})
        by_lr = {}
        for g in opt.param_groups:
            for p in g["params"]:
                by_lr[id(p)] = g["lr"]
        assert all(by_lr[id(p)] == pytest.approx(1.0) for p in pred.parameters())
        assert all(by_lr[id(p)] == pytest.approx(0.1) for p in body.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
        sched.step()
        assert sorted({round(g["lr"], 9) for g in opt.param_groups}) == [0.05, 0.5]
    # the step itself: SGD without momentum moves the predictor 10x as far for the same gradient
    opt = build_optimizer("sgd", model, 0.1, 0.0, momentum=0.0, lr_scales={pred: 10.0})
    before = [p.detach().clone() for p in (body.weight, pred[0].weight)]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.allclose(before[0] - body.weight, torch.full_like(body.weight, 0.1))
    assert torch.allclose(before[1] - pred[0].weight, torch.full_like(pred[0].weight, 1.0))
    with pytest.raises(ValueError, match="must be positive"):
        build_optimizer("sgd", model, 0.1, 0.0, lr_scales={pred: 0.0})

"""Learning-rate schedules: warm-up, cosine, step and constant multipliers, the LambdaLR that
applies them per optimiser step (and resumes from its state), and epochs to steps."""

from __future__ import annotations

import math

import pytest
import torch

from clvr.methods.schedules import build_scheduler, epochs_to_steps, lr_multiplier


def test_warmup_is_linear_from_the_first_step():
    w, total = 4, 20
    values = [lr_multiplier(s, total, w, "cosine") for s in range(w + 1)]
    assert values == [1 / 4, 2 / 4, 3 / 4, 1.0, 1.0]               # (s + 1) / w, then the peak
    assert values[0] > 0
    for kind, extra in [("constant", {}), ("step", {"milestones": (10,)})]:
        assert [lr_multiplier(s, total, w, kind, **extra) for s in range(w + 1)] == values


def test_no_warmup_starts_at_the_peak():
    assert lr_multiplier(0, 10) == 1.0
    assert lr_multiplier(0, 10, 0, "constant") == 1.0


@pytest.mark.parametrize("final", [0.0, 0.1, 0.3, 0.25, 0.5, 1.0])
def test_cosine_midpoint_end_and_formula(final):
    w, total = 10, 110
    assert lr_multiplier(w + (total - w) // 2, total, w, "cosine", final=final) == (1 + final) / 2
    assert lr_multiplier(total, total, w, "cosine", final=final) == final
    assert lr_multiplier(total + 5, total, w, "cosine", final=final) == final   # past the end
    for s in range(w, total + 1):
        t = (s - w) / (total - w)
        expected = final + (1 - final) * (1 + math.cos(math.pi * t)) / 2
        assert lr_multiplier(s, total, w, "cosine", final=final) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("kind, options", [("cosine", {}), ("cosine", {"final": 0.1}),
                                           ("step", {"milestones": (30, 60)}), ("constant", {})])
def test_non_increasing_after_warmup(kind, options):
    w, total = 7, 90
    values = [lr_multiplier(s, total, w, kind, **options) for s in range(w - 1, total + 1)]
    assert values[0] == 1.0
    assert all(b <= a for a, b in zip(values, values[1:]))


def test_step_schedule_drops_exactly_at_milestones():
    total, ms = 200, (120, 160)                    # InstDisc / MoCo v1, one step per epoch
    values = [lr_multiplier(s, total, 0, "step", milestones=ms) for s in range(total + 1)]
    assert set(values[:120]) == {1.0}
    assert set(values[120:160]) == {0.1}
    assert set(values[160:]) == {0.1 ** 2}
    assert lr_multiplier(50, 100, 0, "step", milestones=(50,), gamma=0.5) == 0.5
    assert lr_multiplier(49, 100, 0, "step", milestones=(50,), gamma=0.5) == 1.0


def run_schedule(total, warmup, kind, steps, scheduler=None, opt=None, **options):
    """The lr each of ``steps`` optimiser steps used, stepping the scheduler after each."""
    if opt is None:
        w = torch.nn.Parameter(torch.zeros(2))
        opt = torch.optim.SGD([{"params": [w]}, {"params": [torch.nn.Parameter(torch.zeros(1))],
                                                  "lr": 0.02}], lr=0.3, momentum=0.9)
        scheduler = build_scheduler(opt, total, warmup, kind, **options)
    used = []
    for _ in range(steps):
        used.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return used, opt, scheduler


@pytest.mark.parametrize("kind, options", [("cosine", {"final": 0.01}), ("cosine", {}),
                                           ("step", {"milestones": (20, 35)}), ("constant", {})])
def test_scheduler_follows_lr_multiplier_over_a_run(kind, options):
    total, warmup = 50, 5
    used, opt, _ = run_schedule(total, warmup, kind, total, **options)
    for s, lrs in enumerate(used):
        m = lr_multiplier(s, total, warmup, kind, **options)
        assert lrs == pytest.approx([0.3 * m, 0.02 * m], rel=1e-12, abs=0)
    end = lr_multiplier(total, total, warmup, kind, **options)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.3 * end, 0.02 * end], rel=1e-12)


def test_scheduler_state_dict_round_trip_continues_identically():
    total, warmup, options = 40, 4, {"final": 0.05}
    whole, _, _ = run_schedule(total, warmup, "cosine", total, **options)
    first, opt, scheduler = run_schedule(total, warmup, "cosine", 17, **options)
    saved_opt, saved = opt.state_dict(), scheduler.state_dict()

    p = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    fresh = torch.optim.SGD([{"params": [p[0]]}, {"params": [p[1]], "lr": 0.02}], lr=0.3, momentum=0.9)
    fresh_scheduler = build_scheduler(fresh, total, warmup, "cosine", **options)
    fresh.load_state_dict(saved_opt)
    fresh_scheduler.load_state_dict(saved)
    rest, _, _ = run_schedule(total, warmup, "cosine", total - 17, fresh_scheduler, fresh)
    assert first + rest == whole


@pytest.mark.parametrize("args, message", [
    (dict(total_steps=0), "total_steps must be >= 1, got 0"),
    (dict(warmup_steps=-1), r"warmup_steps must be in \[0, total_steps=100\], got -1"),
    (dict(warmup_steps=101), r"warmup_steps must be in \[0, total_steps=100\], got 101"),
    (dict(kind="linear"), "unknown lr schedule 'linear'; choose one of cosine, step, constant"),
    (dict(kind="step", milestones=(60, 30)), r"milestones must be strictly increasing, got \[60, 30\]"),
    (dict(kind="step", milestones=(30, 30)), "milestones must be strictly increasing"),
    (dict(kind="step", milestones=(0, 30)), r"milestones must be in \(0, total_steps=100\), got \[0, 30\]"),
    (dict(kind="step", milestones=(30, 100)), r"milestones must be in \(0, total_steps=100\)"),
    (dict(kind="step"), "kind='step' needs milestones"),
    (dict(kind="step", milestones=(30,), gamma=0.0), r"gamma must be in \(0, 1\], got 0.0"),
    (dict(kind="cosine", milestones=(30,)), "milestones apply only to kind='step'"),
    (dict(final=1.5), r"final must be in \[0, 1\], got 1.5"),
    (dict(final=-0.1), r"final must be in \[0, 1\], got -0.1"),
    (dict(kind="constant", final=0.1), "final=0.1 applies only to kind='cosine'"),
    (dict(step=-1), "step must be >= 0, got -1"),
])
def test_validation(args, message):
    call = {"step": 0, "total_steps": 100, "warmup_steps": 0, "kind": "cosine", **args}
    with pytest.raises(ValueError, match=message):
        lr_multiplier(**call)
    if "step" not in args:                         # the scheduler checks before building
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        with pytest.raises(ValueError, match=message):
            build_scheduler(opt, **{k: v for k, v in call.items() if k != "step"})


def test_warmup_over_the_whole_run():
    assert [lr_multiplier(s, 4, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 0.0]


def test_epochs_to_steps():
    assert epochs_to_steps(10, 1251) == 12510                     # SimCLR's warm-up, batch 1024
    assert epochs_to_steps([120, 160], 5005) == [600600, 800800]  # InstDisc at batch 256
    assert epochs_to_steps(0.5, 391) == round(195.5) == 196
    assert epochs_to_steps(2.5, 3) == 8                           # round(7.5)
    assert epochs_to_steps((), 10) == []
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1, got 0"):
        epochs_to_steps(10, 0)
    with pytest.raises(ValueError, match="epochs must be >= 0, got -1"):
        epochs_to_steps([5, -1], 10)

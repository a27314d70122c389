"""In-batch InfoNCE between two aligned sets: row i of ``a`` and row i of ``b`` are a positive pair,
every other row of the other set is a negative (CLIP's image-text contrast, object-level contrast
between two views of each object)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .precision import full_precision


def _check(a, b, valid, group, temperature):
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"a and b must both be (N, D); got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    if valid is not None and (valid.shape != (n,) or valid.dtype != torch.bool):
        raise ValueError(f"valid must be a bool tensor of shape ({n},) like the rows of a; "
                         f"got {valid.dtype} of shape {tuple(valid.shape)}")
    if group is not None and (group.shape != (n,) or group.is_floating_point() or group.is_complex()
                              or group.dtype == torch.bool):
        raise ValueError(f"group must be an integer tensor of shape ({n},) like the rows of a; "
                         f"got {group.dtype} of shape {tuple(group.shape)}")
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0:
            raise ValueError(f"a tensor temperature must be 0-d; got shape {tuple(temperature.shape)}")
    elif not (math.isfinite(float(temperature)) and float(temperature) > 0):
        raise ValueError(f"temperature must be positive and finite; got {temperature}")


@full_precision
def pairwise_info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float | torch.Tensor = 0.1, *,
                      symmetric: bool = True, normalize: bool = True, gather: bool = False,
                      valid: torch.Tensor | None = None, group: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the valid anchors of ``logsumexp_j(s_ij) - s_ii`` with ``s_ij = a_i . b_j / t``.

    Direction a->b takes each a_i as anchor against the candidates b_j; direction b->a swaps the
    roles. With ``symmetric`` the loss is the average of the two directions' means (CLIP),
    otherwise only a->b.

    Args:
        a, b: (N, D); row i of each is a positive pair. L2-normalised here when ``normalize``.
        temperature: a positive float, or a 0-d tensor (e.g. a learnable one: it gets a gradient;
            its sign is not checked, as that would synchronise the device).
        valid: optional (N,) bool. Rows with False are neither anchors nor candidates (padding).
            The mean is over the valid anchors of this process. A process with no valid anchor
            gets an exact 0 that is still connected to ``a``, ``b``, ``temperature`` and, with
            ``gather``, to the gathered candidates, so its backward runs (and takes part in the
            gathers' all-reduce: the other processes do not hang) and gives zero gradients.
        group: optional (N,) integer. For anchor i, a candidate j != i with
            ``group[j] == group[i]`` is left out of the denominator (another view of the same
            thing, e.g. the same box picked twice); the positive j == i always stays.
        gather: take the candidates (and their ``valid``/``group``) from every process of the
            default ``torch.distributed`` group, in rank order; local anchor i's positive is
            column ``rank * N + i``. Every process must pass the same N and the same options (all
            with or all without ``valid``/``group``). The gradient flows back to every process's
            rows, so W processes of batch N whose losses and gradients are averaged (DDP) equal
            one process of batch W*N when every process has as many valid anchors; otherwise the
            average of per-process means weights the processes unequally (scale process r's loss
            by ``W * n_r / sum(n)`` to get the global mean). One process, or no process group:
            the same as ``gather=False``.

    Returns:
        A 0-d tensor in the dtype of ``a``.
    """
    _check(a, b, valid, group, temperature)
    n = a.shape[0]
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    rank, world = 0, 1
    if gather:
        from ..distributed import all_gather_cat, all_gather_with_grad, rank_and_world
        rank, world = rank_and_world()
    if world > 1:
        cand_b = torch.cat(all_gather_with_grad(b))                          # (W * N, D)
        cand_a = torch.cat(all_gather_with_grad(a)) if symmetric else None
        cand_valid = all_gather_cat(valid) if valid is not None else None
        cand_group = all_gather_cat(group) if group is not None else None
    else:
        cand_b, cand_a, cand_valid, cand_group = b, a, valid, group

    rows = torch.arange(n, device=a.device)
    cols = torch.arange(world * n, device=a.device)
    positive = cols[None, :] == (rank * n + rows)[:, None]                   # (N, W * N)
    drop = torch.zeros_like(positive)
    if cand_valid is not None:
        drop |= ~cand_valid[None, :]
    if cand_group is not None:
        drop |= group[:, None] == cand_group[None, :]
    # The positive column is never dropped, so every row keeps a finite logit; the rows of
    # invalid anchors are computed but weighted 0 (no data-dependent shapes, no NaN).
    drop &= ~positive
    weight = torch.ones(n, dtype=a.dtype, device=a.device) if valid is None else valid.to(a.dtype)
    count = weight.sum().clamp(min=1)

    def direction(anchors, candidates):
        logits = (anchors @ candidates.T / temperature).masked_fill(drop, float("-inf"))
        per_anchor = torch.logsumexp(logits, dim=1) - logits[rows, rank * n + rows]
        return (per_anchor * weight).sum() / count

    loss = direction(a, cand_b)
    if symmetric:
        loss = (loss + direction(b, cand_a)) / 2
    return loss

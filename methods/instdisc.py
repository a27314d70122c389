"""InstDisc (Wu et al., 2018): every image is its own class. A memory bank holds one feature per
image; NCE tells an image's bank entry from 4096 entries drawn uniformly.

Encoder: ResNet + a linear head to 128-d, L2-normalised. The loss
(:func:`clvr.methods.losses.nce`) needs the normalising constant Z, estimated once on the first
batch as ``N * mean(exp(s / t))`` over the noise similarities of every process, then held fixed
(it is a buffer: it is saved and restored with the model). After the loss the bank entries of the
batch move towards the new features (``v <- norm(0.5 v + 0.5 f)``).

``loss = "softmax"`` scores the same similarities with the non-parametric softmax the NCE
approximates (the paper's eq. 2: cross-entropy of ``[s_pos, s_noise...] / t``, the positive
first), for data sets small enough that m noise entries cover most of the bank: there NCE's
fixed Z, estimated from a random bank on the first batch, is far from the true one, and on the
1,438 digits InstDisc with NCE collapsed (``bench/method_quality.py``).

Noise samples are drawn once per step and shared by the batch (``shared_negatives``, default):
drawing per sample, as the original code does, scores B x m x D products and holds a B x m x D
tensor (0.5 GB at batch 256, 4 GB for PIRL's 32000 negatives) for the same estimate in
expectation.

A sample's own bank row is never its negative: it is its positive. A draw per sample is made from
the other N - 1 rows; in a shared draw, the columns that hit a sample's own row are left out of
its loss (``keep``). With 1,024 draws from 1,438 rows, about half the samples used to meet their
own row among their negatives (0.71 copies on average), which kept the softmax loss above log 2
and pushed each sample away from its own entry. The softmax draws without replacement, so that
with ``negatives >= N`` every row counts once with the sample's own as the label: lemniscate's
full softmax. NCE draws with replacement (independent noise samples, as its estimate assumes)
from the N - 1 other rows, so ``Pn = 1 / (N - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import all_gather_cat
from .encoder import Encoder
from .errors import MethodError
from .heads import linear_head, mlp_head
from .logs import contrast_logs
from .losses import info_nce_from_logits, nce, nce_log_z
from .memory_bank import MemoryBank
from .method import Method, MethodOutput
from .registry import register_method


class MemoryBankMethod(Method):
    """What InstDisc and PIRL share: the bank, the noise draws and the fixed Z of NCE."""
    needs_num_samples = True
    gathers = True

    def make_bank(self, dim: int) -> None:
        c = self.config
        self.bank = MemoryBank(self.num_samples, dim, momentum=c.bank_momentum)

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.negatives < 1:
            raise MethodError(f"method {cls.name!r}: negatives must be at least 1, got {config.negatives}")
        if not 0.0 <= config.bank_momentum < 1.0:
            raise MethodError(f"method {cls.name!r}: bank_momentum must be in [0, 1), got {config.bank_momentum}")
        if config.loss not in ("nce", "softmax"):
            raise MethodError(f"method {cls.name!r}: loss must be 'nce' or 'softmax', got {config.loss!r}")
        if config.head not in ("linear", "mlp_bn"):
            raise MethodError(f"method {cls.name!r}: head = {config.head!r}; choose linear or mlp_bn")

    def projection(self, width: int) -> nn.Module:
        """The head of the image branch: linear (the papers') or ``mlp_bn`` (an MLP with BatchNorm)."""
        c = self.config
        return linear_head(width, c.dim) if c.head == "linear" else mlp_head(width, c.hidden, c.dim, batch_norm=True)

    def noise(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bank entries of the noise samples of the batch's samples ``index`` (B,), and which
        count for each: ((m, D) shared by the batch, (B, m) keep: False where a drawn row is the
        sample's own) or ((B, m, D) drawn per sample from the other rows, None)."""
        c = self.config
        if c.shared_negatives:
            drawn = self.bank.negatives(c.negatives, replacement=c.loss == "nce")
            return self.bank.bank[drawn], drawn[None, :] != index.to(drawn.device)[:, None]
        return self.bank.bank[self.bank.negatives(c.negatives, exclude=index)], None

    @staticmethod
    def similarities(f: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(B, m) similarities of features ``f`` with the noise entries."""
        return f @ noise.T if noise.dim() == 2 else torch.einsum("bd,bmd->bm", f, noise)

    def log_z(self, buffer: torch.Tensor, negatives: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Z from the first batch (every process's noise similarities), then fixed."""
        if torch.isnan(buffer):
            kept = None if keep is None else all_gather_cat(keep.to(torch.uint8)).bool()   # gloo: no bool
            buffer.copy_(nce_log_z(all_gather_cat(negatives.detach()), self.config.temperature, self.num_samples,
                                   kept))
        return buffer

    def contrast(self, positive: torch.Tensor, negatives: torch.Tensor, keep: torch.Tensor | None,
                 log_z_buffer: torch.Tensor) -> torch.Tensor:
        """The loss of (B,) positive and (B, m) noise similarities (``keep``: which count, see
        :meth:`noise`): NCE with the fixed Z held in ``log_z_buffer`` and the noise drawn from the
        N - 1 rows other than the sample's, or the softmax over ``[positive, negatives]``
        (``loss = "softmax"``)."""
        c = self.config
        if c.loss == "softmax":
            logits = torch.cat([positive[:, None], negatives], 1)
            if logits.dtype not in (torch.float32, torch.float64):
                logits = logits.float()                     # bf16/fp16 similarities: the softmax in fp32
            if keep is not None:
                every = torch.ones_like(keep[:, :1])
                logits = logits.masked_fill(~torch.cat([every, keep], 1), float("-inf"))
            return info_nce_from_logits(logits / c.temperature)
        return nce(positive, negatives, self.log_z(log_z_buffer, negatives, keep), c.temperature,
                   self.num_samples - 1, keep)

    @staticmethod
    def scored(positive: torch.Tensor, negatives: torch.Tensor, keep: torch.Tensor | None) -> dict:
        """The step's logs (:func:`contrast_logs`), the left-out columns neither positive nor negative."""
        exclude = None if keep is None else torch.cat([torch.zeros_like(keep[:, :1]), ~keep], 1)
        return contrast_logs(torch.cat([positive[:, None], negatives], 1), exclude=exclude)


@register_method("instdisc")
class InstDisc(MemoryBankMethod):
    views = "two_view"
    view_options = {"views": 1}
    recipe = "instdisc"
    training = {"optim": {"name": "sgd", "lr": 0.03, "weight_decay": 1e-4, "momentum": 0.9},
                "schedule": {"kind": "step", "milestones": [120, 160], "gamma": 0.1}, "epochs": 200}
    paper = "Wu et al., Unsupervised Feature Learning via Non-Parametric Instance Discrimination, CVPR 2018"
    reported = "54.0"

    @dataclass
    class Config(Method.Config):
        dim: int = 128
        negatives: int = 4096
        temperature: float = 0.07
        bank_momentum: float = 0.5
        shared_negatives: bool = True
        loss: str = "nce"             # nce (the paper's) | softmax (the exact form NCE approximates)
        head: str = "linear"          # linear (the paper's) | mlp_bn (SimCLR's: Linear-BN-ReLU-Linear)
        hidden: int = 2048            # the mlp_bn head's hidden width

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        backbone = self.make_backbone()
        self.online = Encoder(backbone, self.projection(backbone.num_features), normalize=True)
        self.make_bank(self.config.dim)
        self.register_buffer("log_z_value", torch.tensor(math.nan))

    def objective(self, batch) -> MethodOutput:
        (x,) = self.views_to_contrast(batch, count=1)
        f = self.online(x)
        positive = (f * self.bank.get(batch.index)).sum(1)
        noise, keep = self.noise(batch.index)
        negatives = self.similarities(f, noise)
        loss = self.contrast(positive, negatives, keep, self.log_z_value)
        self.bank.update(batch.index, f)
        return MethodOutput(loss, self.scored(positive, negatives, keep))

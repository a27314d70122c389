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
expectation. A draw may hit the sample itself with probability m / N, as in the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .distributed import all_gather_cat
from .encoder import Encoder
from .errors import MethodError
from .heads import linear_head
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

    def noise(self, batch_size: int) -> torch.Tensor:
        """Bank entries of the noise samples: (m, D) shared by the batch or (B, m, D)."""
        c = self.config
        if c.shared_negatives:
            return self.bank.bank[self.bank.negatives(c.negatives)]
        return self.bank.bank[self.bank.negatives(c.negatives, batch=batch_size)]

    @staticmethod
    def similarities(f: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(B, m) similarities of features ``f`` with the noise entries."""
        return f @ noise.T if noise.dim() == 2 else torch.einsum("bd,bmd->bm", f, noise)

    def log_z(self, buffer: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Z from the first batch (every process's noise similarities), then fixed."""
        if torch.isnan(buffer):
            buffer.copy_(nce_log_z(all_gather_cat(negatives.detach()), self.config.temperature, self.num_samples))
        return buffer

    def contrast(self, positive: torch.Tensor, negatives: torch.Tensor, log_z_buffer: torch.Tensor) -> torch.Tensor:
        """The loss of (B,) positive and (B, m) noise similarities: NCE with the fixed Z held in
        ``log_z_buffer``, or the softmax over ``[positive, negatives]`` (``loss = "softmax"``)."""
        c = self.config
        if c.loss == "softmax":
            logits = torch.cat([positive[:, None], negatives], 1)
            if logits.dtype not in (torch.float32, torch.float64):
                logits = logits.float()                     # bf16/fp16 similarities: the softmax in fp32
            return info_nce_from_logits(logits / c.temperature)
        return nce(positive, negatives, self.log_z(log_z_buffer, negatives), c.temperature, self.num_samples)


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

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        backbone = self.make_backbone()
        self.online = Encoder(backbone, linear_head(backbone.num_features, self.config.dim), normalize=True)
        self.make_bank(self.config.dim)
        self.register_buffer("log_z_value", torch.tensor(math.nan))

    def objective(self, batch) -> MethodOutput:
        (x,) = self.views_to_contrast(batch, count=1)
        f = self.online(x)
        positive = (f * self.bank.get(batch.index)).sum(1)
        negatives = self.similarities(f, self.noise(len(batch)))
        loss = self.contrast(positive, negatives, self.log_z_value)
        self.bank.update(batch.index, f)
        logs = contrast_logs(torch.cat([positive[:, None], negatives], 1))
        return MethodOutput(loss, logs)

"""The contrastive objectives as small pure functions: tensors in, a scalar loss out.

Each lives in the module named after it and is computed stably (log-sum-exp), in the dtype of its
inputs, so that float64 checks against the formulas are exact:

- :func:`info_nce`  one positive and shared or per-query negatives (MoCo, CLIP, object contrast);
- :func:`nt_xent`   SimCLR's 2N-anchor loss, optionally with the negatives of every process;
- :func:`pairwise_info_nce`  in-batch InfoNCE between two aligned sets (CLIP, object contrast),
  symmetric or one-way, with padding and same-object masks, optionally across processes;
- :func:`nce`       InstDisc's binary noise-contrastive estimation against a uniform noise;
- :func:`byol`      BYOL's normalised regression, symmetrised;
- :func:`cpc`       CPC's InfoNCE between predicted and true patch embeddings, k rows ahead.

State (memory bank, queue, momentum encoders) and gathering across processes live elsewhere; a
loss only computes its formula.
"""

from .byol import byol
from .cpc import cpc
from .info_nce import info_nce, info_nce_from_logits, info_nce_logits
from .nce import nce, nce_log_z
from .nt_xent import nt_xent
from .pairwise import pairwise_info_nce

__all__ = ["byol", "cpc", "info_nce", "info_nce_from_logits", "info_nce_logits", "nce", "nce_log_z", "nt_xent", "pairwise_info_nce"]

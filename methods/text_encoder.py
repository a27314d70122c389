"""A text encoder over UTF-8 bytes, for CLIP-style image-text contrast: no vocabulary to download.

Each text becomes ``BOS, its UTF-8 bytes (0..255), EOS``, padded with ``PAD`` to the longest text
in the batch; a text too long for ``max_length`` loses its last bytes (possibly in the middle of a
multi-byte character), never its EOS. A pre-LayerNorm transformer reads the tokens (padding is
masked out of attention, so it never changes a text's feature), and the text's feature is the
final hidden state at its EOS token, as in CLIP.

Names for :func:`text_encoder`: ``bytes`` (dim 256, 4 layers, 4 heads) and ``bytes_tiny``
(dim 32, 1 layer, 2 heads; for tests).
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259


def tokenize(texts: list[str], max_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both (B, L): L the longest ``BOS bytes EOS`` in the batch, at most
    ``max_length``; ``ids`` padded with PAD, ``mask`` True on BOS, bytes and EOS."""
    if max_length < 2:
        raise ValueError(f"max_length = {max_length!r}; must be at least 2 (room for BOS and EOS)")
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"texts must be a list of str, got a single {type(texts).__name__}")
    seqs = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str")
        seqs.append([BOS, *text.encode("utf-8")[:max_length - 2], EOS])
    length = max(map(len, seqs), default=0)
    ids = torch.full((len(seqs), length), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = True
    return ids, mask


class ByteTransformer(nn.Module):
    """Byte and learned position embeddings, ``layers`` pre-LN transformer layers (GELU), a final
    LayerNorm; the feature of a text is the output at its EOS. ``num_features = dim``."""

    def __init__(self, dim: int = 256, layers: int = 4, heads: int = 4, max_length: int = 77,
                 mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim = {dim} is not divisible by heads = {heads}")
        if max_length < 2:
            raise ValueError(f"max_length = {max_length!r}; must be at least 2 (room for BOS and EOS)")
        self.max_length = max_length
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.empty(max_length, dim))
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.01)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * mlp_ratio, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # no nested tensors: padded positions stay ordinary (masked) tokens in every mode
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.num_features = dim

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Features (B, dim) of tokens from :func:`tokenize` (``mask`` True on real tokens, which
        must come first in each row and end with EOS)."""
        if ids.dim() != 2 or mask.shape != ids.shape:
            raise ValueError(f"ids and mask must both be (B, L); got {tuple(ids.shape)} and "
                             f"{tuple(mask.shape)}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"{ids.shape[1]} tokens, more than max_length = {self.max_length}")
        if len(ids) == 0:                              # an empty batch (e.g. a process's last)
            return self.pos.new_zeros(0, self.num_features)
        x = self.embed(ids) + self.pos[:ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        eos = mask.sum(dim=1) - 1
        return x[torch.arange(len(ids), device=ids.device), eos]

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids, mask = tokenize(texts, self.max_length)
        device = self.pos.device
        return self.encode_ids(ids.to(device), mask.to(device))


TEXT_ENCODERS = {
    "bytes": dict(),
    "bytes_tiny": dict(dim=32, layers=1, heads=2),
}


def text_encoder(name: str, **options) -> nn.Module:
    """A text encoder by name: ``bytes`` or ``bytes_tiny``; options override the name's
    :class:`ByteTransformer` arguments (e.g. ``max_length``)."""
    if name not in TEXT_ENCODERS:
        near = difflib.get_close_matches(name, TEXT_ENCODERS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown text encoder {name!r}; choose one of {', '.join(TEXT_ENCODERS)}{hint}")
    return ByteTransformer(**{**TEXT_ENCODERS[name], **options})

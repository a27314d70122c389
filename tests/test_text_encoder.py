"""The byte-level text encoder: tokens, truncation, padding that changes nothing, positions."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.text_encoder import BOS, EOS, PAD, tokenize, text_encoder


def test_utf8_round_trip():
    text = "héllo 中"
    ids, mask = tokenize([text])
    raw = text.encode("utf-8")
    assert len(raw) > len(text)                                   # multi-byte characters
    assert ids.shape == mask.shape == (1, len(raw) + 2) and mask.all()
    assert ids[0, 0] == BOS and ids[0, -1] == EOS
    assert bytes(ids[0, 1:-1].tolist()).decode("utf-8") == text


def test_batch_padding_and_mask_are_exact():
    ids, mask = tokenize(["", "a", "abcd"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == [
        [BOS, EOS, PAD, PAD, PAD, PAD],
        [BOS, 97, EOS, PAD, PAD, PAD],
        [BOS, 97, 98, 99, 100, EOS],
    ]
    assert mask.tolist() == [[True] * 2 + [False] * 4, [True] * 3 + [False] * 3, [True] * 6]


def test_truncation_keeps_bos_the_first_bytes_and_eos():
    ids, mask = tokenize(["abcdefghij", "xy"], max_length=5)
    assert ids.tolist() == [[BOS, 97, 98, 99, EOS], [BOS, 120, 121, EOS, PAD]]
    assert mask.tolist() == [[True] * 5, [True] * 4 + [False]]
    ids, _ = tokenize(["abc"], max_length=2)
    assert ids.tolist() == [[BOS, EOS]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_length = 1"):
        tokenize(["a"], max_length=1)
    with pytest.raises(TypeError, match=r"texts\[1\] is a bytes"):
        tokenize(["a", b"b"])
    with pytest.raises(TypeError, match="list of str"):
        tokenize("abc")
    with pytest.raises(ValueError, match="'bytes-tiny'.*did you mean 'bytes_tiny'"):
        text_encoder("bytes-tiny")
    m = text_encoder("bytes_tiny", max_length=4)
    with pytest.raises(ValueError, match="max_length = 4"):
        m.encode_ids(*tokenize(["abcdef"], max_length=6))


@pytest.mark.parametrize("grad", [True, False])      # no_grad may take torch's fast path
def test_padding_never_changes_a_text(grad):
    torch.manual_seed(0)
    m = text_encoder("bytes_tiny").double().eval()
    with torch.set_grad_enabled(grad):
        alone = m(["abc"])
        batch = m(["abc", "a much longer caption, with ütf-8 and 中文"])
    assert batch.shape == (2, 32) and alone.dtype == torch.float64
    assert (alone[0] - batch[0]).abs().max() < 1e-10
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_positions_make_order_matter():
    torch.manual_seed(0)
    m = text_encoder("bytes_tiny").double().eval()
    assert (m(["ab"]) - m(["ba"])).abs().max() > 1e-6
    with torch.no_grad():
        m.pos.zero_()                        # without positions, attention cannot tell the order
    assert (m(["ab"]) - m(["ba"])).abs().max() < 1e-10


def test_shapes_and_gradients_reach_the_byte_embedding():
    torch.manual_seed(0)
    m = text_encoder("bytes_tiny").train()
    out = m(["hi", "there", ""])
    assert out.shape == (3, m.num_features) == (3, 32)
    # not out.sum(): the sum of a LayerNorm's output does not depend on its input
    (out * torch.randn(out.shape)).sum().backward()
    grad = m.embed.weight.grad
    assert grad is not None
    for token in (BOS, EOS, ord("h"), ord("t")):
        assert grad[token].abs().sum() > 0
    assert grad[PAD].abs().sum() == 0                   # padding reaches nothing
    assert grad[ord("z")].abs().sum() == 0
    assert text_encoder("bytes").num_features == 256
    assert m.encode_ids(*tokenize([])).shape == (0, 32)

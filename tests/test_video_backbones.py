"""Video backbones: frame-wise pooling against a per-frame loop, R(2+1)D's factorisation and
parameter budget, temporal mixing, shapes for any clip length, norms and names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clvr.methods.backbones import backbone
from clvr.methods.video_backbones import Conv2Plus1D, FrameBackbone, R2Plus1D, video_backbone


def params(m):
    return sum(p.numel() for p in m.parameters())


def clips(b=2, t=4, size=32, seed=0, dtype=torch.float32):
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_frame_backbone_equals_a_loop_over_frames(pool):
    torch.manual_seed(0)
    image = backbone("tiny").double().eval()
    video = FrameBackbone(image, pool=pool).eval()
    x = clips(b=3, t=5, size=24, dtype=torch.float64)
    per_frame = torch.stack([image(x[:, i]) for i in range(x.shape[1])], dim=1)    # (B, T, F)
    expected = per_frame.mean(dim=1) if pool == "mean" else per_frame.max(dim=1).values
    out = video(x)
    assert video.num_features == image.num_features == out.shape[1]
    assert out.dtype == torch.float64
    assert (out - expected).abs().max() < 1e-10
    # and it is not a trivial pool: the frames do differ
    assert (per_frame - per_frame[:, :1]).abs().max() > 1e-3


def test_mid_channels_follow_the_paper_formula_and_the_stem_has_45():
    m = video_backbone("r2plus1d_18")
    assert m.num_features == 512
    convs = [c for c in m.stages.modules() if isinstance(c, Conv2Plus1D)]
    assert len(convs) == 2 * 8                      # two per basic block, 8 blocks
    for c in convs:
        nin, nout = c.spatial.in_channels, c.temporal.out_channels
        t, d = c.temporal.kernel_size[0], c.spatial.kernel_size[1]
        assert (t, d) == (3, 3)
        assert c.spatial.kernel_size == (1, 3, 3) and c.temporal.kernel_size == (3, 1, 1)
        expected = int(t * d * d * nin * nout / (d * d * nin + t * nout))      # floor
        assert c.spatial.out_channels == c.temporal.in_channels == expected
        # the point of M: the pair has (just under) the parameters of the full t x d x d conv
        full, pair = t * d * d * nin * nout, d * d * nin * expected + t * expected * nout
        assert full - (d * d * nin + t * nout) < pair <= full
    stem = m.stem[0]
    assert (stem.spatial.in_channels, stem.spatial.out_channels, stem.temporal.out_channels) == (3, 45, 64)
    assert stem.spatial.kernel_size == (1, 7, 7) and stem.spatial.stride == (1, 2, 2)
    assert stem.temporal.kernel_size == (3, 1, 1) and stem.temporal.stride == (1, 1, 1)


def _factorised(nin, nout, t, d, mid):
    """Parameters of spatial conv + its norm + temporal conv (no biases)."""
    return d * d * nin * mid + 2 * mid + t * mid * nout


def test_r2plus1d_18_parameter_count_from_the_architecture():
    m = video_backbone("r2plus1d_18")
    widths = [64, 128, 256, 512]
    # R(2+1)D-18 as the paper describes it
    expected = _factorised(3, 64, 3, 7, 45) + 2 * 64                          # stem + BN
    full_3d = 3 * 7 * 7 * 3 * 64 + 2 * 64                                     # R3D-18 for comparison
    cin = 64
    for i, w in enumerate(widths):
        for j in range(2):
            for nin in (cin, w):                                              # conv1, conv2
                mid = (3 * 9 * nin * w) // (9 * nin + 3 * w)
                expected += _factorised(nin, w, 3, 3, mid) + 2 * w            # + BN after it
                full_3d += 27 * nin * w + 2 * w
            if cin != w:
                expected += cin * w + 2 * w                                   # 1x1x1 projection + BN
                full_3d += cin * w + 2 * w
            cin = w
    assert params(m) == expected
    # the paper's claim: R(2+1)D-18 has about R3D-18's parameters (33.3M vs 33.4M with the classifier)
    assert abs(params(m) - full_3d) / full_3d < 0.01


def test_only_r2plus1d_mixes_time():
    torch.manual_seed(0)
    r21 = video_backbone("r2plus1d_tiny").double().eval()
    frames = video_backbone("frames:tiny").double().eval()
    x = clips(t=4, size=16, dtype=torch.float64)
    changed = x.clone()
    changed[:, 0] = torch.randn_like(changed[:, 0])
    assert (r21(changed) - r21(x)).abs().max() > 1e-6          # frame 0 reaches the feature
    reversed_ = x.flip(1)
    assert (r21(reversed_) - r21(x)).abs().max() > 1e-6        # order matters
    shuffled = x[:, [2, 0, 3, 1]]
    assert (frames(shuffled) - frames(x)).abs().max() < 1e-10   # frame-wise + mean: order does not
    assert (frames(changed) - frames(x)).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["r2plus1d_tiny", "frames:tiny"])
@pytest.mark.parametrize("t", [1, 2, 4, 8])
def test_any_clip_length(name, t):
    torch.manual_seed(0)
    m = video_backbone(name).eval()
    out = m(clips(t=t))
    assert out.shape == (2, m.num_features) and torch.isfinite(out).all()


def test_gradients_reach_the_first_conv():
    torch.manual_seed(0)
    m = video_backbone("r2plus1d_tiny").train()
    m(clips(t=4)).sum().backward()
    first = m.stem[0].spatial.weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_layer_norm_has_no_batch_norm_and_keeps_samples_independent():
    torch.manual_seed(0)
    for name in ("r2plus1d_tiny", "frames:tiny"):
        m = video_backbone(name, norm="layer").train()
        assert not [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
        assert any(isinstance(x, nn.GroupNorm) for x in m.modules())
        x = clips(b=3, t=2)
        assert torch.allclose(m(x[:1]), m(x)[:1], atol=1e-5)
    assert any(isinstance(x, nn.BatchNorm3d) for x in video_backbone("r2plus1d_tiny").modules())


def test_bad_names_pools_and_inputs_are_errors():
    with pytest.raises(ValueError, match="'r2plus1d18'.*did you mean 'r2plus1d_18'"):
        video_backbone("r2plus1d18")
    with pytest.raises(ValueError, match="did you mean 'frames:tiny'"):
        video_backbone("frame:tiny")
    with pytest.raises(ValueError, match="'resnet-18'.*did you mean 'resnet18'"):
        video_backbone("frames:resnet-18")
    with pytest.raises(ValueError, match="'median'.*mean, max"):
        video_backbone("frames:tiny", pool="median")
    with pytest.raises(ValueError, match="'sum'"):
        FrameBackbone(backbone("tiny"), pool="sum")
    with pytest.raises(ValueError, match="'instance'"):
        R2Plus1D(layers=(1,), width=4, norm="instance")
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\)"):
        video_backbone("r2plus1d_tiny")(torch.randn(2, 3, 32, 32))
    assert video_backbone("frames:tiny", pool="max", width=4).num_features == 16

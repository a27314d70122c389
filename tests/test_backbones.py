"""Backbones: shapes, the published parameter counts of ResNet-18/50, stems, norms, names."""

from __future__ import annotations

import pytest
import torch

from clvr.methods.backbones import backbone


def params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,features,count", [
    # torchvision's published counts without the 1000-way classifier (fc: F*1000 + 1000)
    ("resnet18", 512, 11_689_512 - (512 * 1000 + 1000)),
    ("resnet50", 2048, 25_557_032 - (2048 * 1000 + 1000)),
])
def test_resnets_match_the_published_architecture(name, features, count):
    m = backbone(name)
    assert m.num_features == features
    assert params(m) == count
    m.eval()
    out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, features) and torch.isfinite(out).all()


def test_cifar_stem_keeps_resolution_for_small_images():
    img = torch.randn(2, 3, 32, 32)
    cifar, imagenet = backbone("resnet18", stem="cifar"), backbone("resnet18")
    feats = {}
    cifar.stages.register_forward_hook(lambda m, i, o: feats.__setitem__("cifar", o.shape))
    imagenet.stages.register_forward_hook(lambda m, i, o: feats.__setitem__("imagenet", o.shape))
    cifar(img), imagenet(img)
    assert feats["cifar"][-1] == 4 and feats["imagenet"][-1] == 1    # 32/8 vs 32/32


def test_layer_norm_makes_samples_independent():
    m = backbone("tiny", norm="layer").train()
    x = torch.randn(4, 3, 24, 24)
    alone = m(x[:1])
    together = m(x)[:1]
    assert torch.allclose(alone, together, atol=1e-5)
    b = backbone("tiny", norm="batch").train()
    assert not torch.allclose(b(x[:1].repeat(2, 1, 1, 1))[:1], b(x)[:1], atol=1e-3)


def test_unknown_names_and_options_are_errors():
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        backbone("resnet-18")
    with pytest.raises(ValueError, match="stem"):
        backbone("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="norm"):
        backbone("tiny", norm="instance")


def test_gradients_reach_the_first_layer():
    m = backbone("resnet18", stem="cifar")
    m(torch.randn(2, 3, 16, 16)).sum().backward()
    assert m.stem[0].weight.grad is not None and m.stem[0].weight.grad.abs().sum() > 0


def test_standardize_images_matches_the_formula_in_float64():
    from clvr.methods.backbones import standardize_images
    torch.manual_seed(0)
    x = torch.randn(3, 3, 5, 4, dtype=torch.float64) * 2 + 1
    want = torch.empty_like(x)
    for b in range(3):
        centred = x[b] - x[b].mean(dim=(1, 2), keepdim=True)
        n = centred.numel()
        std = (((centred - centred.mean()) ** 2).sum() / (n - 1)).sqrt()
        want[b] = centred / (std + 1e-3)
    assert torch.allclose(standardize_images(x), want, atol=1e-12, rtol=0)


def test_input_norm_image_drops_each_images_colour_brightness_and_contrast():
    """The same pattern under another mean colour per channel and another contrast gives the
    same features with input_norm="image", and other features without it."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    shifted = 1.7 * x + torch.tensor([0.5, -0.3, 0.9])[None, :, None, None]
    for name in ("tiny", "resnet18"):
        with_norm = backbone(name, stem="cifar", width=8, input_norm="image").eval() if name != "tiny" \
            else backbone(name, width=8, input_norm="image").eval()
        plain = backbone(name, stem="cifar", width=8).eval() if name != "tiny" else backbone(name, width=8).eval()
        with torch.no_grad():
            # equal up to the eps added to the std (1e-3 against stds of 1 and 1.7)
            assert torch.allclose(with_norm(x), with_norm(shifted), rtol=2e-3, atol=1e-5), name
            assert not torch.allclose(plain(x), plain(shifted), atol=1e-2), name


def test_input_norm_travels_with_the_exported_encoder(tmp_path):
    from clvr.methods import get_method
    from clvr.methods.checkpoint import save_checkpoint
    from clvr.methods.export import export_encoder, load_encoder
    torch.manual_seed(0)
    m = get_method("byol")({"backbone": "tiny", "hidden": 16, "dim": 8, "predictor_hidden": 16,
                            "input_norm": "image"}).eval()
    assert m.backbone_options()["input_norm"] == "image"
    arch = {"kind": "image", "name": "tiny", "options": m.backbone_options(), "num_features": m.encoder.num_features}
    feed = {"mean": [0.5] * 3, "std": [0.25] * 3, "size": 16, "layout": "B,3,H,W"}
    save_checkpoint(tmp_path, 1, {"step": 1, "method": "byol", "model": m.state_dict(),
                                  "encoder": {"prefix": "online.backbone.", "architecture": arch, "input": feed}})
    weights, _ = export_encoder(tmp_path, tmp_path / "encoder.safetensors")
    loaded = load_encoder(weights)
    x = torch.randn(3, 3, 16, 16) * 3 + 2
    with torch.no_grad():
        assert torch.equal(loaded(x), m.encoder(x))
        assert torch.allclose(loaded(x), loaded(0.5 * x - 1), rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("method,config,words", [
    ("simclr", {"input_norm": "channel"}, ["input_norm", "'channel'", "'none' or 'image'"]),
    ("byol", {"backbone": "timm:resnet18", "input_norm": "image"}, ["input_norm", "timm:resnet18"]),
    ("video_simclr", {"input_norm": "image"}, ["input_norm", "video"]),
])
def test_input_norm_is_refused_where_it_cannot_apply(method, config, words):
    from clvr.methods import get_method
    from clvr.methods.errors import MethodError
    with pytest.raises(MethodError) as e:
        get_method(method).make_config(config)
    assert all(w in str(e.value) for w in words), str(e.value)

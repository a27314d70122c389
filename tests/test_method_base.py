"""The base class and the registry: strict configs with the papers' defaults, names that suggest
the nearest one, the ``clvr methods`` command and the docs table it prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from clvr.methods import Method, MethodError, available, get_method, register_method
from clvr.methods.method import pairs
from clvr.pipeline.batch import ViewBatch

ROOT = Path(__file__).resolve().parents[1]


def two_view(b=4, size=16, views=2, valid=None):
    g = torch.Generator().manual_seed(0)
    vs = tuple(torch.randn(b, 3, size, size, generator=g) for _ in range(views))
    return ViewBatch(views=vs, names=tuple(f"view{i}" for i in range(views)), index=torch.arange(b),
                     label=torch.zeros(b, dtype=torch.long),
                     valid=torch.ones(b, dtype=torch.bool) if valid is None else valid, kind="two_view")


# -- configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, field, value", [
    # the papers' settings (../shared/REFERENCE.md)
    ("simclr", "temperature", 0.1), ("simclr", "hidden", 2048), ("simclr", "dim", 128),
    ("moco_v1", "temperature", 0.07), ("moco_v1", "queue", 65536), ("moco_v1", "momentum", 0.999),
    ("moco_v1", "head", "linear"), ("moco_v2", "temperature", 0.2), ("moco_v2", "head", "mlp"),
    ("moco_v2", "hidden", 2048), ("byol", "hidden", 4096), ("byol", "dim", 256),
    ("byol", "predictor_hidden", 4096), ("byol", "base_momentum", 0.996),
    ("instdisc", "negatives", 4096), ("instdisc", "temperature", 0.07), ("instdisc", "bank_momentum", 0.5),
    ("instdisc", "dim", 128), ("pirl", "negatives", 32000), ("pirl", "jigsaw_weight", 0.5),
    ("pirl", "temperature", 0.07), ("cpc_v2", "norm", "layer"), ("cpc_v1", "directions", 1),
    ("clip", "temperature", 0.07),
])
def test_defaults_are_the_papers(name, field, value):
    assert get_method(name).defaults()[field] == value


@pytest.mark.parametrize("name, recipe, views", [
    ("simclr", "simclr", "two_view"), ("moco_v1", "mocov1", "two_view"), ("moco_v2", "mocov2", "two_view"),
    ("byol", "byol", "two_view"), ("instdisc", "instdisc", "two_view"), ("pirl", "pirl", "jigsaw"),
    ("cpc_v2", "cpc-v2", "cpc_grid"), ("object_contrast", "simclr", "object_crops"),
    ("video_moco", "simclr", "video_clips"), ("clip", "simclr", "image_text")])
def test_each_method_reads_its_papers_views_and_recipe(name, recipe, views):
    cls = get_method(name)
    assert (cls.recipe, cls.views) == (recipe, views)


def test_a_config_typo_names_the_nearest_key():
    cls = get_method("simclr")
    with pytest.raises(MethodError, match=r"unknown key 'temprature'.*did you mean 'temperature'"):
        cls({"backbone": "tiny", "temprature": 0.5})
    with pytest.raises(MethodError, match="unknown key 'tempreature'"):
        cls(backbone="tiny", tempreature=0.5)


@pytest.mark.parametrize("changes, message", [
    ({"dim": "big"}, "expected a number"),
    ({"dim": 1.5}, "expected an integer"),
    ({"gather": "yes"}, "expected true/false"),
    ({"backbone": 18}, "expected a string"),
    ({"temperature": 0.0}, r"temperature = 0.0 must be positive"),
    ({"backbone": "resnet5"}, "did you mean 'resnet50'"),
])
def test_bad_values_are_errors(changes, message):
    with pytest.raises(MethodError, match=message):
        get_method("simclr")({"backbone": "tiny", **changes})


def test_config_from_dict_keywords_or_instance_agree():
    cls = get_method("moco_v2")
    a = cls.make_config({"backbone": "tiny", "queue": 64})
    b = cls.make_config(backbone="tiny", queue=64)
    c = cls.make_config(cls.Config(backbone="tiny", queue=64))
    assert a == b == c and a.temperature == 0.2
    with pytest.raises(MethodError, match="must be a MoCoV2.Config or a dict"):
        cls.make_config(["queue", 64])


def test_a_memory_bank_method_needs_the_data_set_size():
    with pytest.raises(MethodError, match="num_samples"):
        get_method("instdisc")({"backbone": "tiny"})


# -- what a method does with the batch --------------------------------------------------------

def test_padding_is_dropped_on_one_process():
    m = get_method("simclr")({"backbone": "tiny", "hidden": 16, "dim": 8, "norm": "layer"}).eval()
    full = two_view(6)
    valid = torch.tensor([True, True, False, True, True, False])
    padded = ViewBatch(views=full.views, names=full.names, index=full.index, label=full.label, valid=valid,
                       kind="two_view")
    with torch.no_grad():
        assert torch.allclose(m(padded).loss, m(full.select(valid)).loss, atol=1e-6)
        assert not torch.allclose(m(padded).loss, m(full).loss, atol=1e-4)


def test_a_batch_of_the_wrong_views_is_refused_with_what_it_got():
    m = get_method("simclr")({"backbone": "tiny", "hidden": 16, "dim": 8})
    b = two_view(4, views=1)
    with pytest.raises(MethodError, match=r"needs at least 2 image views.*view0 \(4, 3, 16, 16\)"):
        m(b)
    jig = ViewBatch(views=(torch.randn(4, 3, 16, 16), torch.randn(4, 9, 3, 8, 8)), names=("image", "patches"),
                    index=torch.arange(4), label=torch.zeros(4, dtype=torch.long),
                    valid=torch.ones(4, dtype=torch.bool), kind="jigsaw")
    with pytest.raises(MethodError, match=r"patches \(4, 9, 3, 8, 8\).*'two_view' generator"):
        m(jig)
    with pytest.raises(MethodError, match="needs a view named 'clips'"):
        get_method("video_simclr")({"backbone": "frames:tiny", "hidden": 16, "dim": 8})(jig)


def test_embed_runs_one_forward_per_resolution():
    calls = []

    def net(x):
        calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))
    views = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 8, 8)]
    out = Method.embed(net, views)
    assert calls == [(4, 3, 8, 8), (2, 3, 4, 4)]
    for v, o in zip(views, out):
        assert torch.allclose(o, v.mean(dim=(2, 3)))


def test_pairs():
    assert pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert pairs(2, ordered=True) == [(0, 1), (1, 0)]


def test_the_encoder_is_the_backbone_without_heads():
    m = get_method("moco_v2")({"backbone": "tiny", "queue": 64, "hidden": 16, "dim": 8})
    x = torch.randn(2, 3, 16, 16)
    assert m.encoder(x).shape == (2, m.encoder.num_features)
    assert m.encoder is m.online.backbone
    assert get_method("pirl")({"backbone": "tiny"}, num_samples=10).encoder.num_features == 64


# -- registry ---------------------------------------------------------------------------------

def test_an_unknown_name_suggests_the_nearest():
    with pytest.raises(MethodError, match=r"unknown method 'mocov2' \(did you mean 'moco_v2'\?\)"):
        get_method("mocov2")


def test_paths_and_classes_resolve_and_bad_ones_are_named():
    assert get_method("clvr.methods.simclr:SimCLR") is get_method("simclr")
    with pytest.raises(MethodError, match="cannot import module 'no_such_pkg.mod' \\(No module named 'no_such_pkg'"):
        get_method("no_such_pkg.mod:Cls")
    with pytest.raises(MethodError, match="has no 'Nope'"):
        get_method("clvr.methods.simclr:Nope")
    with pytest.raises(MethodError, match="not a subclass of clvr.methods.Method"):
        get_method("clvr.methods.simclr:nt_xent")


def test_register_refuses_a_taken_name_and_a_non_method():
    with pytest.raises(MethodError, match="already registered"):
        @register_method("simclr")
        class Other(Method):
            pass
    with pytest.raises(MethodError, match="not a subclass"):
        register_method("thing")(object)
    assert "thing" not in available()


# -- the command and the docs -----------------------------------------------------------------

def test_methods_list_and_show(clvr):
    r = clvr("methods", "list")
    assert r.code == 0
    for name in available():
        assert re.search(rf"^{name}\s", r.out, re.M)
    r = clvr("methods", "show", "moco_v2")
    assert r.code == 0 and "queue: 65536" in r.out and "temperature: 0.2" in r.out and "recipe:     mocov2" in r.out
    r = clvr("methods", "show", "mocov2")
    assert r.code == 2 and "did you mean 'moco_v2'" in r.err


def test_the_docs_table_is_what_the_command_prints(clvr):
    doc = (ROOT / "docs" / "methods.md").read_text()
    block = re.search(r"<!-- methods table: clvr methods list --markdown -->\n(.*?)\n<!-- end of methods table -->",
                      doc, re.S)
    assert block, "docs/methods.md keeps the generated table between its markers"
    r = clvr("methods", "list", "--markdown")
    assert r.code == 0 and block.group(1).strip() == r.out.strip(), \
        "regenerate the table in docs/methods.md with: clvr methods list --markdown"


def test_width_sets_the_backbone_channels_and_travels_in_the_options():
    from clvr.methods import get_method
    from clvr.methods.errors import MethodError
    simclr = get_method("simclr")
    m = simclr({"backbone": "resnet18", "stem": "cifar", "width": 8, "hidden": 32, "dim": 16})
    assert m.encoder.num_features == 64                       # 8 x 2^3 channels in the last stage
    assert m.backbone_options() == {"stem": "cifar", "norm": "batch", "width": 8}
    assert "width" not in simclr({"backbone": "tiny"}).backbone_options()     # 0: the backbone's own
    video = get_method("video_simclr")({"backbone": "r2plus1d_tiny", "width": 4, "hidden": 16, "dim": 8})
    assert video.backbone_options()["width"] == 4 and video.encoder.num_features == 32
    with pytest.raises(MethodError, match="width must be 0"):
        simclr({"width": -1})

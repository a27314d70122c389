"""A view generator plugged in from outside clvr: entry point and decorator."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clvr.pipeline import PipelineError, ViewLoader
from clvr.pipeline.views import available, get_view, register_view, ViewGenerator
from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PLUGIN = '''
"""A user's package: a generator with a DALI half and a torch half."""
from nvidia.dali import fn, types


def gray_pair(sample, ctx):
    color = ctx.view(sample.image, ctx.recipe(0))
    gray = fn.hsv(fn.resize(sample.image, size=[ctx.recipe(0).size] * 2), saturation=0.0)
    gray = fn.crop_mirror_normalize(gray, dtype=types.FLOAT, output_layout="CHW", std=[255.0] * 3)
    return {"views": [color, gray], "extras": {"twice_index": sample.index * 2}}


def mark(batch, ctx):
    batch.extras["on_device"] = torch.ones(len(batch), device=batch.device)
    return batch


import torch  # noqa: E402
'''


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=30) / "train"


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """An installed-looking package (module + dist-info with a clvr.views entry point)."""
    (tmp_path / "userviews").mkdir()
    (tmp_path / "userviews" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "userviews-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: userviews\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [clvr.views]
        gray_pair = userviews:gray_pair
        broken_view = userviews_missing:nothing
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("userviews", None)


def test_entry_point_plugin_runs_without_editing_clvr(digits, plugin_package):
    assert "gray_pair" in available()
    ld = ViewLoader(digits, "gray_pair", recipe="simclr-cifar", batch_size=4, num_threads=1)
    b = next(iter(ld))
    assert b.kind == "gray_pair" and len(b.views) == 2
    color, gray = b.views
    assert color.shape == gray.shape == (4, 3, 32, 32)
    # DALI's hsv goes through YIQ with rounded matrices: channels agree to one grey level.
    level = 1 / 255 + 1e-6
    assert (gray[:, 0] - gray[:, 1]).abs().max() <= level and (gray[:, 1] - gray[:, 2]).abs().max() <= level
    assert (color[:, 0] - color[:, 1]).abs().max() > 0.05
    assert torch.equal(b["twice_index"].reshape(-1), b.index * 2)


def test_function_plugin_with_a_device_step(digits, plugin_package):
    import userviews
    register_view("gray_pair_marked", view_names=("color", "gray"), on_device=userviews.mark)(userviews.gray_pair)
    b = next(iter(ViewLoader(digits, "gray_pair_marked", recipe="simclr-cifar", batch_size=4, num_threads=1)))
    assert b.names == ("color", "gray")
    assert torch.equal(b["on_device"], torch.ones(4))


def test_broken_plugin_is_named(plugin_package):
    with pytest.raises(PipelineError, match=r"view plug-in 'broken_view' \(userviews_missing:nothing\) failed"):
        get_view("broken_view")


def test_class_plugin_and_duplicate_names(digits):
    @register_view("test_single_view")
    class Single(ViewGenerator):
        view_names = ("only",)

        def graph(self, sample, ctx):
            return {"views": [ctx.view(sample.image, ctx.recipe(0))]}

    b = next(iter(ViewLoader(digits, "test_single_view", recipe="simclr-cifar", batch_size=2, num_threads=1)))
    assert b.names == ("only",) and b["only"].shape == (2, 3, 32, 32)
    with pytest.raises(PipelineError, match="already registered"):
        register_view("two_view")(Single)

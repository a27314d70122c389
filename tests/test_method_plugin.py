"""A user's method, from outside clvr: the example of docs/methods.md, installed as a package
with a ``clvr.methods`` entry point, found by path, by entry point and by the command, and trained
one step on batches from the real pipeline."""

from __future__ import annotations

import math
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clvr.methods import MethodError, available, get_method
from clvr.methods import registry
from clvr.pipeline import ViewLoader
from conftest import make_demo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def docs_example() -> str:
    """The python block of the section 'Your own method' (the code a user copies)."""
    section = DOC.read_text().split("## Your own method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("digits") / "d", limit=24) / "train"


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "usermethods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "contrast.py").write_text(docs_example())
    info = tmp_path / "usermethods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: usermethods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [clvr.methods]
        my_contrast = usermethods.contrast:MyContrast
        broken_method = usermethods_missing:Nothing
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for mod in ("usermethods", "usermethods.contrast"):
        sys.modules.pop(mod, None)
    registry._REGISTRY.pop("my_contrast", None)


def test_the_docs_example_trains_from_outside_clvr(user_package, digits):
    cls = get_method("usermethods.contrast:MyContrast")
    assert cls.name == "my_contrast" and cls.__module__ == "usermethods.contrast"
    ld = ViewLoader(digits, cls.views, recipe="simclr-cifar", batch_size=8, view_options=cls.view_options)
    batch = next(iter(ld))
    method = cls({"backbone": "tiny", "dim": 16})
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    first = None
    for step in range(4):
        loss, logs = method(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        assert math.isfinite(loss.item()) and 0 <= float(logs["pos_acc"]) <= 1
    assert loss.item() < first
    with pytest.raises(MethodError, match="unknown key 'dimm'"):
        cls({"dimm": 3})


def test_the_entry_point_is_found_by_name_and_listed(user_package, clvr):
    assert "my_contrast" in available()
    cls = get_method("my_contrast")
    assert cls.__module__ == "usermethods.contrast"
    r = clvr("methods", "show", "my_contrast")
    assert r.code == 0 and "temperature: 0.2" in r.out


def test_a_broken_plugin_is_named(user_package):
    with pytest.raises(MethodError, match=r"method plug-in 'broken_method' \(usermethods_missing:Nothing\) failed"):
        get_method("broken_method")

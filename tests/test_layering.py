"""The package layering: clvr.shards runs without torch and DALI; no layer imports a later one."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

SHARD_MODULES = sorted(p.stem for p in (REPO / "shards").glob("*.py") if p.stem != "__init__")


def test_shards_and_the_shard_command_import_no_torch_or_dali():
    code = (
        "import sys, importlib\n"
        f"for m in {SHARD_MODULES!r}: importlib.import_module('clvr.shards.' + m)\n"
        "assert not [m for m in sys.modules if m.startswith(('clvr.pipeline', 'clvr.methods'))]\n"
        "import clvr.cli; clvr.cli.build_parser()\n"
        # the command's parser declares `clvr views` and `clvr methods` too: their parser modules
        # and errors modules (standard library only) may load, nothing else of those packages
        "light = {'clvr.pipeline', 'clvr.pipeline.cli', 'clvr.pipeline.errors', 'clvr.methods', "
        "'clvr.methods.cli', 'clvr.methods.errors', 'clvr.methods.train_cli', 'clvr.methods.eval_cli'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'nvidia', 'kornia', 'accelerate', 'webdataset', 'numba') or "
        "(m.startswith(('clvr.pipeline', 'clvr.methods')) and m not in light))\n"
        "print(bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    assert len(SHARD_MODULES) >= 10


def _imports(folder: str) -> set[str]:
    found = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return found


def test_no_layer_imports_a_later_one():
    def top(mods, prefix):
        return {m for m in mods if m == prefix or m.startswith(prefix + ".")}

    shards = _imports("shards")
    pipeline = _imports("pipeline")
    assert not top(shards, "clvr.pipeline") and not top(shards, "clvr.methods")
    assert not top(shards, "torch") and not top(shards, "nvidia")
    assert not top(pipeline, "clvr.methods")


def test_package_dir_maps_the_top_level_folders():
    import clvr.methods
    import clvr.pipeline
    import clvr.shards

    assert clvr.shards.__file__.startswith(str(REPO / "shards"))
    assert clvr.pipeline.__file__.startswith(str(REPO / "pipeline"))
    assert clvr.methods.__file__.startswith(str(REPO / "methods"))
    r = subprocess.run([sys.executable, "-c", "import pipeline"], capture_output=True, cwd="/")
    assert r.returncode != 0, "nothing called 'pipeline' may land in site-packages"

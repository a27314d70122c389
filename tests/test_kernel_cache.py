"""A process that compiles the CPU view kernels and one that loads them from numba's cache make
bit-identical views (issue 21, part 8).

numba compiles each ``@njit`` function of ``clvr.pipeline._fused_kernels`` into its own module;
a caller carries a re-optimised copy of each callee, and the JIT binds a call to whichever copy
of the function it loaded first. A process that compiles loads every callee's own module first,
one that hits the cache loads only ``render_range`` with its copies. So any kernel whose copies
may round differently (fast-math: reassociated, fused, vectorised another way) gives views that
depend on the state of the cache. Each run below is a fresh process on a cache of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

# Views of a fixed small batch through every step of the fused kernel: crop, flip, all four
# jitter ops (contrast takes the mean luma), grayscale, blur, solarize, channel drop, normalise.
SCRIPT = r"""
import json, sys
import numpy as np
from clvr.pipeline import _fused_kernels as K
from clvr.pipeline import fused_views as fv
from clvr.pipeline import recipe as R

rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (30 + 3 * i, 36 - 2 * i, 3), dtype=np.uint8) for i in range(6)]
shapes = [im.shape for im in images]
recipes = [*R.preset("simclr-cifar"), *R.preset("byol"), *R.preset("cpc-v2"),
           R.preset("simclr-cifar")[0].replace(jitter={"p": 1.0}, grayscale={"p": 0.3},
                                               blur={"p": 0.5}, channel_drop={"p": 0.3})]
draws = np.random.default_rng(1)
prm = np.concatenate([fv.draw(draws, r, shapes, 32) for r in recipes for _ in range(2)])
owners = np.tile(np.arange(len(images)), len(prm) // len(images))
np.save(sys.argv[1], fv.render(images, prm, owners, 32, threads=1))
st = K.render_range.stats
print(json.dumps({"hits": sum(st.cache_hits.values()), "misses": sum(st.cache_misses.values())}))
"""


def views(tmp_path, cache, name):
    out = tmp_path / f"{name}.npy"
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, NUMBA_CACHE_DIR=str(cache)))
    assert p.returncode == 0, p.stderr[-3000:]
    return np.load(out), json.loads(p.stdout.strip().splitlines()[-1])


def test_cold_and_warm_kernel_caches_give_bit_identical_views(tmp_path):
    cache = tmp_path / "numba-cache"
    cold, st = views(tmp_path, cache, "cold")
    assert st == {"hits": 0, "misses": 1}, st               # this process compiled the kernels
    assert list(cache.rglob("_fused_kernels.render_range-*.nbi"))
    warm, st = views(tmp_path, cache, "warm")
    assert st == {"hits": 1, "misses": 0}, st               # this one loaded them
    assert cold.shape == warm.shape == (60, 3, 32, 32) and np.isfinite(cold).all()
    same = (cold.view(np.uint32) == warm.view(np.uint32)).reshape(len(cold), -1).all(1)
    differ = np.flatnonzero(~same).tolist()
    assert differ == [], (f"views {differ} differ between a cold and a warm kernel cache, by up to "
                          f"{np.abs(cold - warm).max():.3g}")

"""clvr: contrastive learning of visual representations.

The work lives in three packages, layered so each may only use the ones before it:

* ``clvr.shards``   -- datasets to WebDataset shards (no torch, no DALI),
* ``clvr.pipeline`` -- DALI/kornia views over shards,
* ``clvr.methods``  -- contrastive objectives, methods, training and evaluation.

This package holds only the ``clvr`` command and the version.
"""

__version__ = "0.1.0"

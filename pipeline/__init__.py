"""clvr.pipeline: shards in, the views of contrastive learning out, through NVIDIA DALI.

The data flow from shard to batch, each step in the module named after it:

- :mod:`.source`   resolve a shard-set spec (directory, brace pattern, list, URLs);
- :mod:`.reader`   DALI's webdataset reader, one part per process, exact epochs;
- :mod:`.sample`   one sample's graph nodes and lazy decoding (CPU, or nvJPEG on a GPU);
- :mod:`.recipe`   augmentation recipes as data (presets, YAML overrides);
- :mod:`.augment`  the recipe's augmentations as DALI ops;
- :mod:`.views`    view generators (two_view, multi_crop, cpc_grid, jigsaw, object_crops,
  video_clips, image_text, and plug-ins);
- :mod:`.loader`   ``ViewLoader``: the iterator that yields :class:`.batch.ViewBatch` es;
- :mod:`.kornia_stage`  batched photometric ops on the device tensors.
"""

from .batch import ViewBatch
from .errors import PipelineError, SampleError

__all__ = ["ViewBatch", "PipelineError", "SampleError", "ViewLoader"]


def __getattr__(name):
    if name == "ViewLoader":           # imports DALI; keep `import clvr.pipeline` light
        from .loader import ViewLoader
        return ViewLoader
    raise AttributeError(name)

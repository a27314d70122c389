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
- :mod:`.fused_views`   on a CPU: every step of an image view in one compiled kernel;
- :mod:`.kornia_stage`  batched photometric ops on the device tensors;
- :mod:`.remote`   URLs (http, s3, pipe:) streamed by webdataset into DALI;
- :mod:`.preview`  a PNG of what a model will see (``clvr views preview``).
"""

from .errors import PipelineError, SampleError

__all__ = ["ViewBatch", "PipelineError", "SampleError", "ViewLoader"]


def __getattr__(name):
    # ViewLoader imports DALI and torch, ViewBatch torch: `import clvr.pipeline` stays light, so
    # the `clvr` command can build its parser without them.
    if name == "ViewLoader":
        from .loader import ViewLoader
        return ViewLoader
    if name == "ViewBatch":
        from .batch import ViewBatch
        return ViewBatch
    raise AttributeError(name)

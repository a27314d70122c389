"""``clvr.shards``: any image, video, box or caption dataset -> WebDataset shards.

Imports neither torch nor DALI (it runs on a plain CPU box with PIL, numpy and PyAV).
The sample format is in :mod:`clvr.shards.format`; manifests in :mod:`clvr.shards.manifest`.
"""

from .errors import Reject, ShardError
from .manifest import read_manifest, shard_paths, shard_sets

__all__ = ["Reject", "ShardError", "read_manifest", "shard_paths", "shard_sets"]

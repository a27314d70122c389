"""Errors of the view pipeline. Each message names the shard set, shard, key or option at fault."""


class PipelineError(Exception):
    """A problem that stops a loader before or while it reads (bad spec, bad sample, bad option)."""


class SampleError(PipelineError):
    """One sample cannot be turned into views; names its shard and key."""

    def __init__(self, message: str, shard: str | None = None, key: str | None = None):
        super().__init__(message)
        self.shard = shard
        self.key = key

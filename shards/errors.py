"""Errors of the sharding tools. Each message names the file, sample or key at fault."""


class ShardError(Exception):
    """A problem that stops the whole command (bad arguments, a locked or unusable OUT)."""


class StrictReject(ShardError):
    """``--strict`` saw a reject and stopped the run."""


class Reject(Exception):
    """One input sample cannot be used; it is logged to ``rejects.jsonl`` and counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

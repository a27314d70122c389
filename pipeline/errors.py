"""Errors of the view pipeline. Each message names the shard set, shard, key or option at fault."""


class PipelineError(Exception):
    """A problem that stops a loader before or while it reads (bad spec, bad sample, bad option)."""


class SampleError(PipelineError):
    """One sample cannot be turned into views; names its shard and key."""

    def __init__(self, message: str, shard: str | None = None, key: str | None = None):
        super().__init__(message)
        self.shard = shard
        self.key = key


def dali_message(e: Exception) -> str:
    """The useful part of a DALI error: the operator and what it encountered."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    op = next((ln.rstrip(",") for ln in lines if ln.startswith("Error in")), None)
    noise = ("Critical error", "Current pipeline object", "which was used", "encountered", "File ",
             "Error in")
    detail = [ln for ln in lines if not ln.startswith(noise) and not ln.startswith("^")]
    text = "; ".join(x for x in (op, detail[-1] if detail else None) if x)
    return text or (lines[0] if lines else type(e).__name__)

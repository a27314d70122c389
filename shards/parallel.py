"""An ordered, bounded process-pool map: results come back in input order, so the output
of ``--workers N`` is byte-identical to ``--workers 1``, and at most a few chunks are in
flight, so memory stays flat however large the dataset is."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice


class WorkerDied(RuntimeError):
    """A worker process died (e.g. a decoder crashed) while handling ``chunk``."""

    def __init__(self, chunk):
        super().__init__(f"a worker process died while handling {len(chunk)} item(s)")
        self.chunk = chunk


def _worker_init() -> None:
    """Workers leave Ctrl-C to the parent, which stops the pool and cleans up; and on Linux they
    die with the parent, so a killed writer leaves no orphan blocked on the task queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before the request was made
            os._exit(1)


def _run_chunk(fn, chunk):
    return [fn(x) for x in chunk]


def ordered_map(fn, items, workers: int = 1, chunk_size: int = 32, chunks_ahead: int = 2):
    """Yield ``fn(item)`` for every item, in order. ``fn`` must be picklable for ``workers > 1``."""
    it = iter(items)
    if workers <= 1:
        for x in it:
            yield fn(x)
        return
    # fork starts workers in milliseconds (spawn re-imports everything, ~0.5 s a worker); the
    # workers only run ``fn``, so nothing they inherit from the parent's threads is touched.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)
    pending: deque = deque()
    try:
        def submit() -> bool:
            chunk = list(islice(it, chunk_size))
            if chunk:
                pending.append((chunk, pool.submit(_run_chunk, fn, chunk)))
            return bool(chunk)

        for _ in range(workers * chunks_ahead):
            if not submit():
                break
        while pending:
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                raise WorkerDied(chunk) from None
            submit()
            yield from results
    finally:
        for _, f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)

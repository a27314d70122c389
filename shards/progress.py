"""Progress bars for long commands: samples/s, MB/s and the reject count, on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "sample"):
        self.bar = None
        if enabled:
            from tqdm import tqdm  # imported only when shown: it costs a tenth of a second

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                            mininterval=0.5, dynamic_ncols=True, leave=True)
        self.start = time.perf_counter()
        self.bytes = 0
        self.rejects = 0
        self.count = 0

    def update(self, n: int = 1, nbytes: int = 0, rejected: bool = False) -> None:
        self.bytes += nbytes
        self.rejects += int(rejected)
        self.count += n
        if self.bar is None:
            return
        self.bar.update(n)
        if self.count % 64 == 0 or rejected:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix(MBps=f"{self.bytes / elapsed / 1e6:.1f}", rejects=self.rejects,
                                 refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""Reproduce a crash of DALI's CPU image decoder (nvidia-dali-cuda120 2.4.0, found while testing
``on_error="skip"``): a batch of about 36 or more images holding one that cannot be decoded does
not raise the decoder's error but kills the process (SIGSEGV in a thread of
``ImageDecoder<CPUBackend>``); smaller batches raise the error, which clvr names and skips.

Until DALI fixes it, ``clvr shard verify`` (every image decoded) finds such samples before a run,
and reading with batches smaller than about 32 lets ``on_error="skip"`` work.

Usage: python bench/dali_decode_crash.py   (each batch size runs in its own process)
"""

from __future__ import annotations

import io
import subprocess
import sys


def child(batch: int) -> None:
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types
    from PIL import Image

    def png(v: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), v, np.uint8)).save(buf, "PNG")
        return np.frombuffer(buf.getvalue(), np.uint8)

    blobs = [png(i % 255) for i in range(batch)]
    blobs[10] = np.concatenate([blobs[10][:8], np.zeros(len(blobs[10]) - 8, np.uint8)])   # bad pixels

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None)
    def decode():
        data = fn.external_source(source=lambda: blobs, batch=True, dtype=types.UINT8)
        return fn.decoders.image(data, device="cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    try:
        pipe.run()
        print("decoded")
    except RuntimeError:
        print("raised")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    print("| batch | 3 runs |\n|---|---|")
    for batch in (16, 32, 48, 64, 128):
        outcomes = []
        for _ in range(3):
            r = subprocess.run([sys.executable, __file__, "--child", str(batch)], capture_output=True, text=True)
            outcomes.append(r.stdout.strip() or f"killed by signal {-r.returncode}" if r.returncode < 0
                            else r.stdout.strip())
        print(f"| {batch} | {', '.join(outcomes)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

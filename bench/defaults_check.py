"""Benchmark: do clvr's defaults learn? Each method trained as a new user trains it, then scored
against ``make bench-quality``'s number for it.

For each method (the six of ``bench/method_quality.py`` by default) this runs the README's
commands, with no setting but the seed:

    clvr shard demo digits OUT/data
    clvr train --method M --data OUT/data/train --out OUT/runs/M --set seed=S
    clvr eval knn OUT/runs/M --train OUT/data/train --val OUT/data/val --no-baselines

and compares the kNN (k = 20) with the mean over the seeds of the method's kNN in
``bench/out/method_quality/results.json`` (issue 22: within 3 points). Pick a seed the benchmark
did not use (it used 0, 1, 2). Each run is kept in OUT (default ``bench/out/defaults``), so an
interrupted check continues where it stopped.

Usage:
    python bench/defaults_check.py --seed 7
    python bench/defaults_check.py --seed 7 --methods simclr byol
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from method_quality import METHODS, _mean  # noqa: E402

#: how far a default run's kNN may be from the benchmark's mean (issue 22)
TOLERANCE = 3.0


def clvr(*args: str) -> None:
    """Run the ``clvr`` command line as a user does; stop on a failure."""
    command = [sys.executable, "-m", "clvr", *args]
    print("$ clvr " + " ".join(args), flush=True)
    if subprocess.run(command).returncode:
        sys.exit(f"defaults_check: `clvr {' '.join(args)}` failed")


def knn_top1(results: Path, k: int = 20) -> float:
    """kNN top-1 % of the learned features at ``k`` from a ``clvr eval`` results.json."""
    return 100 * json.loads(results.read_text())["protocols"]["knn"][f"k{k}"]["learned"]["top1"]


def verdict(method: str, measured: float, benchmark: float | None) -> str:
    """One line: PASS within :data:`TOLERANCE` of the benchmark's mean, FAIL beyond it."""
    if benchmark is None:
        return f"NONE  {method}: kNN {measured:.1f}; the benchmark has no number for it"
    gap = measured - benchmark
    return (f"{'PASS' if abs(gap) <= TOLERANCE else 'FAIL'}  {method}: kNN {measured:.1f} with the defaults, "
            f"benchmark {benchmark:.1f}: {gap:+.1f} (goal within {TOLERANCE:g})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True, help="the training seed (one the benchmark did not use)")
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "defaults")
    ap.add_argument("--quality", type=Path, default=ROOT / "bench" / "out" / "method_quality" / "results.json",
                    help="make bench-quality's results.json")
    args = ap.parse_args(argv)

    rows = json.loads(args.quality.read_text())["rows"] if args.quality.is_file() else {}
    data = args.out / "data"
    if not (data / "manifest.json").is_file():
        clvr("shard", "demo", "digits", str(data), "--overwrite", "--no-progress")
    lines, table = [], ["| method | kNN, defaults (seed %d) | kNN, bench-quality mean | difference | minutes |" % args.seed,
                        "|---|---|---|---|---|"]
    for method in args.methods:
        run = args.out / "runs" / f"{method}-seed{args.seed}"
        results = run / "eval" / "results.json"
        minutes = None
        if not results.is_file():
            start = time.perf_counter()
            status = json.loads((run / "status.json").read_text()) if (run / "status.json").is_file() else {}
            if status.get("status") != "done":
                resume = (run / "checkpoints").is_dir()      # an interrupted run goes on; a run without one restarts
                if not resume:
                    shutil.rmtree(run, ignore_errors=True)
                clvr("train", "--method", method, "--data", str(data / "train"), "--out", str(run),
                     "--set", f"seed={args.seed}", *(["--resume", "auto"] if resume else []))
            minutes = (time.perf_counter() - start) / 60
            clvr("eval", "knn", str(run), "--train", str(data / "train"), "--val", str(data / "val"),
                 "--out", str(run / "eval"), "--no-baselines", "--no-plots")
        measured = knn_top1(results)
        benchmark = _mean(rows, method, "kNN 100%") if rows.get(method) else None
        lines.append(verdict(method, measured, benchmark))
        compared = f"{benchmark:.1f} | {measured - benchmark:+.1f}" if benchmark is not None else "- | -"
        took = f"{minutes:.1f}" if minutes is not None else "kept"
        table.append(f"| {method} | {measured:.1f} | {compared} | {took} |")
    report = "\n".join(table) + "\n\n" + "\n".join(lines) + "\n"
    print(report)
    (args.out / "table.md").write_text(report)
    return 0 if all(not line.startswith("FAIL") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())

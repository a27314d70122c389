"""``clvr shard info``: a readable summary of a shard set, from its manifest(s) alone."""

from __future__ import annotations

import shlex
from pathlib import Path

from .errors import ShardError
from .manifest import read_manifest, shard_sets, structure_problems


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def describe(out) -> str:
    out = Path(out)
    root = read_manifest(out)
    lines = [f"{out}: clvr shard set (format v{root['format_version']}, kind '{root.get('kind')}', "
             f"written by clvr {root.get('clvr_version', '?')})"]
    for name, (directory, m) in shard_sets(out).items():
        problems = structure_problems(m, f"{directory}/manifest.json")
        if problems:
            raise ShardError("; ".join(problems) + " (run 'clvr shard verify')")
        t = m["totals"]
        avg = t["bytes"] / t["samples"] if t["samples"] else 0
        lines.append(f"  [{name or 'all'}] {t['samples']} samples in {t['shards']} shard(s), {_mb(t['bytes'])} "
                     f"({avg / 1e3:.1f} kB/sample) at {directory}")
        if m.get("label_counts"):
            names = (m.get("classes") or {}).get("names")
            counts = ", ".join(f"{names[int(k)] if names and int(k) >= 0 else k}: {v}"
                               for k, v in m["label_counts"].items())
            lines.append(f"      labels: {counts}")
        lines.append("      components: " + ", ".join(f"{k} ({v})" for k, v in (m.get("components") or {}).items()))
        if m.get("stats"):
            lines.append("      " + ", ".join(f"{k} ({v})" for k, v in m["stats"].items()))
        if m.get("tar_dir", ".") != ".":
            lines.append(f"      tars in {directory / m['tar_dir']} (indexed by clvr shard index)")
        skipped = (m.get("skipped") or {}).get("count")
        if skipped:
            keys = ", ".join(f"{s['shard'].rsplit('/', 1)[-1]}:{s['key']}" for s in m["skipped"]["samples"][:5])
            lines.append(f"      skipped {skipped} sample(s) without an image or video: {keys}")
        if m.get("unknown_extensions"):
            lines.append("      unknown extensions (never read): "
                         + ", ".join(f".{k} ({v})" for k, v in m["unknown_extensions"].items()))
    if root.get("classes"):
        lines.append(f"  classes ({len(root['classes']['names'])}): " + ", ".join(root["classes"]["names"]))
    if root.get("categories"):
        lines.append(f"  box categories ({len(root['categories'])}): "
                     + ", ".join(c["name"] for c in root["categories"]))
    r = root.get("rejects") or {}
    if r:
        lines.append(f"  rejected {r.get('rejected_samples', 0)} sample(s), converted {r.get('converted_samples', 0)}, "
                     f"boxes rejected {r.get('rejected_boxes', 0)}, clipped {r.get('converted_boxes', 0)} "
                     f"(see {out / r.get('file', 'rejects.jsonl')})")
    lines.append(f"  seed: {root.get('seed')}")
    lines.append(f"  command: {shlex.join(root.get('command') or [])}")
    return "\n".join(lines)

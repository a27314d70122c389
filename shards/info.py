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
            source = f" (from {m['label_source']})" if m.get("label_source") else ""
            lines.append(f"      labels{source}: {counts}")
        unlabelled = m.get("unlabelled") or {}
        if unlabelled.get("count"):
            keys = ", ".join(f"{s['shard'].rsplit('/', 1)[-1]}:{s['key']}" for s in unlabelled["samples"][:5])
            lines.append(f"      {unlabelled['count']} sample(s) without a label (-1, left out of evaluation): {keys}")
        lines.append("      components: " + ", ".join(f"{k} ({v})" for k, v in (m.get("components") or {}).items()))
        if m.get("stats"):
            lines.append("      " + ", ".join(f"{k} ({v})" for k, v in m["stats"].items()))
        if m.get("tar_dir", ".") != ".":
            lines.append(f"      tars in {directory / m['tar_dir']} (indexed by clvr shard index)")
        skipped = (m.get("skipped") or {}).get("count")
        if skipped:
            listed = m["skipped"]["samples"]
            keys = ", ".join(f"{s['shard'].rsplit('/', 1)[-1]}:{s['key']}" for s in listed[:5])
            what = "without an image or video" if all(s["reason"].startswith("no ") for s in listed) else \
                "(" + "; ".join(sorted({s["reason"] for s in listed})[:3]) + ")"
            lines.append(f"      skipped {skipped} sample(s) {what}: {keys}")
        if m.get("unknown_extensions"):
            lines.append("      unknown extensions (never read): "
                         + ", ".join(f".{k} ({v})" for k, v in m["unknown_extensions"].items()))
    if root.get("classes"):
        names = root["classes"]["names"]
        lines.append(f"  classes ({len(names)}): " + ", ".join(names[:30]) + (" ..." if len(names) > 30 else ""))
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

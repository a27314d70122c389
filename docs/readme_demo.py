"""Put the output of ``make demo`` into the README: no number there is typed by hand.

    make demo                                   # writes runs/demo-digits/summary.txt and eval/
    python docs/readme_demo.py runs/demo-digits

copies the demo's ``eval/results.json`` to ``docs/demo-results.json`` (kept with the docs, so the
README's table can be checked against it by the tests) and replaces the block between the
README's ``<!-- demo output -->`` and ``<!-- /demo output -->`` markers with the demo's
``summary.txt``: the table it printed and its timings.

    make bench-quality                          # writes bench/out/method_quality/table.md
    python docs/readme_demo.py --quality bench/out/method_quality

replaces the block between ``<!-- method quality -->`` and ``<!-- /method quality -->`` with the
benchmark's ``table.md`` (its tables, its checks and the runs' spreads and collapse flags); the
demo's block is left as it is unless a demo directory is given too.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- demo output -->", "<!-- /demo output -->"
QUALITY_BEGIN, QUALITY_END = "<!-- method quality -->", "<!-- /method quality -->"


def block(summary: str) -> str:
    return f"{BEGIN}\n```\n$ make demo\n...\n{summary.rstrip()}\n```\n{END}"


def quality_block(table_md: str) -> str:
    """The benchmark's title line, then its paragraphs: markdown tables as tables, the lines of
    checks and run notes verbatim in code blocks, sentences as text."""
    title, *parts = table_md.strip().split("\n\n")
    body = []
    for part in (p.strip() for p in parts):
        if part.startswith("|"):
            body.append(part)
        elif "\n" in part or part.startswith(("PASS", "FAIL", "NOTE")):
            body.append(f"```\n{part}\n```")
        else:
            body.append(part)
    text = "\n\n".join(body)
    return f"{QUALITY_BEGIN}\n`$ make bench-quality`: {title}\n\n{text}\n{QUALITY_END}"


def replace(readme: str, begin: str, end: str, text: str) -> str:
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {begin} ... {end} block")
    return pattern.sub(lambda _: text, readme)


def update(readme: str, summary: str) -> str:
    return replace(readme, BEGIN, END, block(summary))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo", type=Path, nargs="?", default=None,
                   help="the demo's --out directory (default runs/demo-digits; with --quality alone, "
                        "the demo's block is left as it is)")
    p.add_argument("--quality", type=Path, default=None,
                   help="also paste this bench/method_quality.py --out directory's table.md")
    args = p.parse_args()
    readme = ROOT / "README.md"
    if args.quality:
        text = replace(readme.read_text(), QUALITY_BEGIN, QUALITY_END,
                       quality_block((args.quality / "table.md").read_text()))
        readme.write_text(text)
        print(f"README.md: method-quality table updated from {args.quality / 'table.md'}")
        if args.demo is None:
            return
    args.demo = args.demo or Path("runs/demo-digits")
    summary = (args.demo / "summary.txt").read_text()
    results = json.loads((args.demo / "eval" / "results.json").read_text())
    shutil.copyfile(args.demo / "eval" / "results.json", ROOT / "docs" / "demo-results.json")
    readme.write_text(update(readme.read_text(), summary))
    print(f"README.md: demo table of {results['encoder']['method']} updated from {args.demo / 'summary.txt'}")


if __name__ == "__main__":
    main()

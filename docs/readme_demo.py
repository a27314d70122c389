"""Put the output of ``make demo`` into the README: no number there is typed by hand.

    make demo                                   # writes runs/demo-digits/summary.txt and eval/
    python docs/readme_demo.py runs/demo-digits

copies the demo's ``eval/results.json`` to ``docs/demo-results.json`` (kept with the docs, so the
README's table can be checked against it by the tests) and replaces the block between the
README's ``<!-- demo output -->`` and ``<!-- /demo output -->`` markers with the demo's
``summary.txt``: the table it printed and its timings.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- demo output -->", "<!-- /demo output -->"


def block(summary: str) -> str:
    return f"{BEGIN}\n```\n$ make demo\n...\n{summary.rstrip()}\n```\n{END}"


def update(readme: str, summary: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    return pattern.sub(lambda _: block(summary), readme)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo", type=Path, help="the demo's --out directory (default runs/demo-digits)",
                   nargs="?", default=Path("runs/demo-digits"))
    args = p.parse_args()
    summary = (args.demo / "summary.txt").read_text()
    results = json.loads((args.demo / "eval" / "results.json").read_text())
    shutil.copyfile(args.demo / "eval" / "results.json", ROOT / "docs" / "demo-results.json")
    readme = ROOT / "README.md"
    readme.write_text(update(readme.read_text(), summary))
    print(f"README.md: demo table of {results['encoder']['method']} updated from {args.demo / 'summary.txt'}")


if __name__ == "__main__":
    main()

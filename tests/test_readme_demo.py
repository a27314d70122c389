"""docs/readme_demo.py pastes the benchmark's table.md into the README block by block."""

from conftest import load_script


def load():
    return load_script("docs/readme_demo.py")


TABLE_MD = """digits, seeds 0, 1

|  | kNN |
|---|---|
| simclr | 93.6 ± 1.2 |

PASS  simclr: kNN 93.6 (goal >= 85)
FAIL  cpc_v2: seed std kNN 3.5 (goal <= 3)

The same budget: each method at SimCLR's steps

|  | own | same |
|---|---|---|
| instdisc | 92.9 | 70.4 |

lowest feature spread of each run: simclr-seed0 0.5
runs flagged for dimensional collapse: none
"""


def test_tables_stay_tables_and_checks_go_in_code_blocks():
    block = load().quality_block(TABLE_MD)
    lines = block.splitlines()
    assert lines[0] == "<!-- method quality -->" and lines[-1] == "<!-- /method quality -->"
    assert lines[1] == "`$ make bench-quality`: digits, seeds 0, 1"
    # both tables are markdown, outside any code fence
    fenced, inside = [], False
    for line in lines:
        if line == "```":
            inside = not inside
        fenced.append(inside)
    for row in ("| simclr | 93.6 ± 1.2 |", "| instdisc | 92.9 | 70.4 |"):
        assert not fenced[lines.index(row)]
    for row in ("FAIL  cpc_v2: seed std kNN 3.5 (goal <= 3)", "runs flagged for dimensional collapse: none"):
        assert fenced[lines.index(row)]
    assert not fenced[lines.index("The same budget: each method at SimCLR's steps")]
    assert not inside, "every code fence is closed"


def test_with_quality_alone_the_demo_block_is_left_as_it_is(tmp_path, monkeypatch):
    module = load()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- demo output -->\nold demo\n<!-- /demo output -->\n"
                      "<!-- method quality -->\nold\n<!-- /method quality -->\n")
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "table.md").write_text(TABLE_MD)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["readme_demo.py", "--quality", str(tmp_path / "q")])
    module.main()
    text = readme.read_text()
    assert "old demo" in text and "| instdisc | 92.9 | 70.4 |" in text and "\nold\n" not in text

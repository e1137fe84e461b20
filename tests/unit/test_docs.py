"""The README and docs/ as an operator reads them: short table cells, the headings the README promises, the six
FTP-through-NAT scenarios in its Troubleshooting table, and no link to a file that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_CELL_WORDS = 40


def table_cells(text: str) -> list[str]:
    """Every cell of every Markdown table (rows start and end with |; escaped \\| stays inside a cell)."""
    cells = []
    for line in text.splitlines():
        row = line.strip()
        if row.startswith("|") and row.endswith("|") and not re.fullmatch(r"[|\s:-]+", row):
            cells.extend(cell.strip() for cell in re.split(r"(?<!\\)\|", row[1:-1]))
    return cells


def long_cells(text: str) -> list[str]:
    return [cell for cell in table_cells(text) if len(cell.split()) > MAX_CELL_WORDS]


def sections(text: str) -> list[str]:
    return [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]


def test_no_table_cell_is_longer_than_about_40_words() -> None:
    found = {path.name: long_cells(path.read_text()) for path in PAGES}
    assert {name: cells for name, cells in found.items() if cells} == {}


def test_the_cell_counter_sees_a_long_cell_and_escaped_bars() -> None:
    long = " ".join(["word"] * 41)
    assert long_cells(f"| a | b |\n|---|---|\n| `x \\| y` | {long} |\n") == [long]
    assert table_cells("| `EPRT \\|2\\|` | z |\n") == ["`EPRT \\|2\\|`", "z"]


def test_the_readme_reads_in_the_operators_order() -> None:
    wanted = ["Install", "Run", "FTPS", "Scale-out", "Operate", "Troubleshooting", "Limits"]
    found = [title for title in sections(README.read_text()) if title.split()[0] in wanted]
    assert [title.split()[0] for title in found] == wanted


def test_the_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["./dev", "demo"], ["./dev", "test"]]
    assert text.index("./dev demo") < text.index("## ")  # above the first section


def test_troubleshooting_lists_the_six_scenarios_and_the_known_client_bugs() -> None:
    text = README.read_text()
    trouble = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [row for row in trouble.splitlines() if row.startswith("|")]
    for number in range(1, 7):
        assert any(f"({number})" in row for row in rows), f"scenario {number} has no row"
    assert "curl#10666" in trouble and "7.88" in trouble
    assert "ftp-alg diagnose" in trouble


def test_every_relative_link_names_a_file_that_exists() -> None:
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                missing.append(f"{page.name}: {target}")
    assert missing == []

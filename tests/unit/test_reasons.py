"""The reason enums, their metric labels and their documented meanings (docs/reasons.md) agree."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from alg.ftp.reasons import DataFailure, Refusal, SessionOutcome
from alg.ops.metrics import Metrics

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reasons.md"
_ROW = re.compile(r"^\| `([a-z0-9_]+)` \| (.+) \|$")

# Each enum and the metric family (and label) that counts it.
FAMILIES: list[tuple[type[StrEnum], str, str]] = [
    (SessionOutcome, "ftp_alg_sessions_total", "outcome"),
    (DataFailure, "ftp_alg_data_channels_failed_total", "reason"),
    (Refusal, "ftp_alg_refusals_total", "reason"),
]


def documented() -> dict[str, dict[str, str]]:
    """The page's tables: section heading (the enum's name) -> value -> meaning."""
    tables: dict[str, dict[str, str]] = {}
    section = ""
    for line in PAGE.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            tables[section] = {}
        elif (row := _ROW.match(line)) is not None:
            assert section, f"a table row before any section: {line}"
            assert row[1] not in tables[section], f"{row[1]} listed twice under {section}"
            tables[section][row[1]] = row[2].strip()
    return tables


@pytest.mark.parametrize(("enum", "family", "label"), FAMILIES, ids=lambda x: getattr(x, "__name__", x))
def test_every_value_has_its_metric_label_and_a_documented_meaning(
    enum: type[StrEnum], family: str, label: str
) -> None:
    table = documented()[enum.__name__]
    assert set(table) == {member.value for member in enum}
    assert all(len(meaning) > 10 for meaning in table.values())
    exposition = generate_latest(Metrics().registry).decode()
    for member in enum:
        if member is Refusal.TLS_OFF:  # a client's routine probe, counted apart from refusals
            assert "ftp_alg_tls_probes_total 0.0" in exposition
            continue
        assert f'{family}{{{label}="{member.value}"}} 0.0' in exposition


def test_values_are_labels_as_they_are() -> None:
    for enum, _, _ in FAMILIES:
        for member in enum:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", member.value), member
            assert str(member) == member.value  # logs print the value, not Enum.NAME

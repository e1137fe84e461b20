"""constraints.txt (the versions the suite passed with) against pyproject.toml (the ranges the package
accepts): every dependency, of the package and of each extra, is pinned, and every pin is inside its range,
so the documented install (`pip install -c constraints.txt ...`) can never ask pip for the impossible."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        listed.extend(extra)
    return [Requirement(text) for text in listed]


def pins(text: str) -> dict[str, Version]:
    found = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, equals, version = line.partition("==")
        assert equals and version, f"constraints.txt: {line!r} is not NAME==VERSION"
        found[canonicalize_name(name)] = Version(version)
    return found


def disagreements(wanted: list[Requirement], pinned: dict[str, Version]) -> list[str]:
    problems = []
    for requirement in wanted:
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: not pinned in constraints.txt")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} is outside pyproject's {requirement.specifier}")
    return problems


def test_every_dependency_is_pinned_inside_its_range() -> None:
    assert disagreements(requirements(), pins((ROOT / "constraints.txt").read_text())) == []


def test_the_build_backend_pin_is_inside_the_build_system_range() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pinned = pins((ROOT / "constraints.txt").read_text())
    assert disagreements([Requirement(text) for text in build], pinned) == []


def test_a_pin_outside_its_range_or_missing_is_reported() -> None:
    wanted = [Requirement("pydantic>=2.6,<3"), Requirement("uvloop>=0.19")]
    assert disagreements(wanted, {"pydantic": Version("3.0.1")}) == [
        "pydantic==3.0.1 is outside pyproject's <3,>=2.6",
        "uvloop: not pinned in constraints.txt",
    ]


def test_majors_known_to_break_are_bounded() -> None:
    bounded = {canonicalize_name(r.name): r.specifier for r in requirements()}
    assert not bounded["pydantic"].contains("3.0.0")
    assert not bounded["prometheus-client"].contains("1.0.0")
    assert not bounded["pyyaml"].contains("7.0")


def test_dev_and_the_container_build_install_with_the_constraints() -> None:
    assert 'pip install -q -c constraints.txt -e ".[$1]"' in (ROOT / "dev").read_text()
    containerfile = (ROOT / "deploy" / "Containerfile").read_text()
    assert "constraints.txt" in containerfile.split("COPY alg")[0]
    assert "pip wheel --no-cache-dir --constraint constraints.txt" in containerfile

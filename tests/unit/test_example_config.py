"""rules/gateway.example.yaml against the settings model: every setting of `Settings` (and of its sections,
tls: included) is in the file, commented-out examples counted, and no key there is unknown to the model; each
line shows its default (its value is the default, or its comment says `default:`); every FTP_ALG_* variable
the code reads is named. So the example and the model cannot drift apart."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from alg.ops.config import Settings, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "rules" / "gateway.example.yaml"
KEY = re.compile(r"^(?P<indent> *)(?P<dash>- +)?(?P<key>[a-z_0-9]+):(?:\s|$)")


def documented(text: str) -> dict[str, str]:
    """Key path -> its line, for live keys and for commented-out ones (`#  key:`, two spaces or more after
    the #; prose comments have one). Nesting comes from indentation, list items from `- `."""
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines():
        line = raw
        if raw.startswith("#"):
            if not raw.startswith("#  "):
                continue
            line = raw[1:]
        match = KEY.match(line)
        if match is None:
            continue
        indent = len(match["indent"]) + len(match["dash"] or "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([key for _, key in stack] + [match["key"]])
        found.setdefault(path, line.strip())
        stack.append((indent, match["key"]))
    return found


def inner_models(annotation: object) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from inner_models(argument)


def model_paths(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Key path -> default (PydanticUndefined when required; nested sections map to their models)."""
    paths: dict[str, object] = {}
    for name, field in model.model_fields.items():
        paths[prefix + name] = field.default
        for inner in inner_models(field.annotation):
            paths.update(model_paths(inner, f"{prefix}{name}."))
    return paths


def test_every_setting_of_the_model_is_in_the_example_and_nothing_else() -> None:
    in_file = set(documented(EXAMPLE.read_text()))
    in_model = set(model_paths(Settings))
    assert {"missing from the example": in_model - in_file, "unknown to the model": in_file - in_model} == {
        "missing from the example": set(),
        "unknown to the model": set(),
    }
    assert {"tls.client.mode", "tls.upstream.verify", "health_check.fall", "upstreams.weight"} <= in_file


def shows_default(line: str, default: object) -> bool:
    if "default" in line:
        return True
    value = yaml.safe_load(line.split(" #", 1)[0].lstrip("- "))
    (shown,) = value.values()
    if isinstance(default, tuple | dict) and not default:
        return shown in ([], {})
    return isinstance(default, int | float | str | bool | type(None)) and shown == default


def test_each_line_shows_its_default() -> None:
    lines = documented(EXAMPLE.read_text())
    defaults = model_paths(Settings)
    missing = [
        lines[path]
        for path, default in defaults.items()
        if default is not PydanticUndefined
        and not isinstance(default, BaseModel)
        and path in lines
        and not shows_default(lines[path], default)
    ]
    assert missing == []


def test_the_key_reader_sees_commented_keys_nesting_and_list_items() -> None:
    text = "a: 1\nb: null\n#  c: 2\n# prose: not a key\nd: []\n#  - e: 3\n#    f: 4\ng:\n  h: 5\n"
    assert set(documented(text)) == {"a", "b", "b.c", "d", "d.e", "d.f", "g", "g.h"}


def test_the_example_loads_and_names_every_environment_variable() -> None:
    load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    used = set()
    for path in (ROOT / "alg").rglob("*.py"):
        used |= set(re.findall(r"FTP_ALG_[A-Z_]+", path.read_text()))
    assert used and {name for name in used if name not in text} == set()

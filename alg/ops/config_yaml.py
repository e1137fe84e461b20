"""YAML files in, validated pydantic models out, and every validation error as one ConfigError line that names
the file, the key path, the YAML line (or the flag) and the fix. Shared by the settings and the rules files.

Rules: reads only the file it is given; never guesses a value; problems are ordered by line (flags first), and
several come as one ConfigProblems whose str() is the first with how many more.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from alg.errors import ConfigError
from alg.ops.config_values import show_value

_Model = TypeVar("_Model", bound=BaseModel)


def load_yaml_model(
    path: str | os.PathLike[str], model: type[_Model], *, what: str, context: Mapping[str, Any] | None = None
) -> _Model:
    """A YAML file validated as `model`, or a ConfigError naming the file, key path and line (rules use it)."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise error_at(f"cannot read the file: {exc.strerror}", source=source) from exc
    root, data = parse_yaml(raw, source, what=what)
    try:
        return model.model_validate(data, context=dict(context or {}))
    except ValidationError as exc:
        raise explain(exc, source=source, root=root, model=model) from exc


def parse_yaml(raw: bytes, source: str, what: str = "settings") -> tuple[yaml.Node, Mapping[str, Any]]:
    loader = yaml.SafeLoader(raw)
    try:
        root = loader.get_single_node()
        data = None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "malformed").split())
        line = mark.line + 1 if mark is not None else None
        raise error_at(f"invalid YAML: {problem}", source=source, line=line) from exc
    except yaml.YAMLError as exc:
        raise error_at(f"invalid YAML: {' '.join(str(exc).split())}", source=source) from exc
    finally:
        loader.dispose()
    if root is None:
        raise error_at(f"the file is empty; expected a mapping of {what}", source=source)
    if not isinstance(root, yaml.MappingNode) or not isinstance(data, Mapping):
        message = f"expected a mapping of {what} at the top level, got {show_value(data)}"
        raise error_at(message, source=source, line=root.start_mark.line + 1)
    _reject_duplicate_keys(root, (), source)
    return root, data


def _reject_duplicate_keys(
    node: yaml.Node, path: tuple[str | int, ...], source: str, visited: set[int] | None = None
) -> None:
    # PyYAML keeps the last of two equal keys silently; the first would be ignored without a word.
    visited = set() if visited is None else visited
    if id(node) in visited:
        return  # an alias: checked where it was anchored (and it may contain itself)
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                if key.value in seen:
                    message = f"duplicate key {key.value!r}, first given on line {seen[key.value]}"
                    raise error_at(message, source=source, key=_key_path((*path, key.value)), line=line)
                seen[key.value] = line
                _reject_duplicate_keys(value, (*path, key.value), source, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, (*path, index), source, visited)


# --- errors: pydantic's loc mapped to the key path, the YAML line and the flag ---


def error_at(message: str, *, source: str | None, key: str = "", line: int | None = None) -> ConfigError:
    error = ConfigError(message, key=key, line=line)
    if source:
        error.args = (f"{source}: {error}",)
    return error


def _key_path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def _locate(root: yaml.Node | None, loc: tuple[str | int, ...]) -> tuple[yaml.Node | None, yaml.Node | None]:
    """The node whose line to name (the key, or the list item) and the value node, for a pydantic loc."""
    at: yaml.Node | None = root
    value: yaml.Node | None = root
    for part in loc:
        if isinstance(value, yaml.MappingNode):
            pair = next((p for p in value.value if getattr(p[0], "value", None) == part), None)
            if pair is None:
                return None, None  # a default, or hidden behind a YAML merge key
            at, value = pair
        elif isinstance(value, yaml.SequenceNode) and isinstance(part, int) and part < len(value.value):
            at = value = value.value[part]
        elif isinstance(value, yaml.ScalarNode):
            break  # one value standing in for a list of one, as `listen: 203.0.113.1:21`
        else:
            return None, None
    return at, value


def _yaml_hint(node: yaml.Node | None, value: object) -> str:
    """Why YAML 1.1 turned what looks like text into a number or a boolean."""
    if not isinstance(node, yaml.ScalarNode) or node.style or isinstance(value, str):
        return ""
    if node.tag.endswith((":int", ":float")) and ":" in node.value:
        return f": YAML 1.1 reads {node.value} as a base-60 number; quote it"
    if node.tag.endswith(":bool") and node.value.lower() not in ("true", "false"):
        return f": YAML 1.1 reads {node.value} as {show_value(value)}; quote it"
    return ""


def _model_at(loc: tuple[str | int, ...], model: type[BaseModel]) -> type[BaseModel] | None:
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):  # an item of a list of models
            annotation = next(iter(get_args(annotation)), None)
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        field = annotation.model_fields.get(str(part))
        annotation = field.annotation if field else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _describe(error: ErrorDetails, loc: tuple[str | int, ...], model: type[BaseModel]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = f"got {show_value(value)}"
    if kind in ("config", "config_at"):
        return error["msg"]
    if kind == "extra_forbidden":
        inner = _model_at(loc[:-1], model)
        known = list(inner.model_fields) if inner else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if close:
            return f"unknown key {loc[-1]!r}; did you mean {close[0]!r}?"
        return f"unknown key {loc[-1]!r}; known keys: {', '.join(known)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(value.lower(), choices, n=1) if isinstance(value, str) else []
        return f"expected {ctx.get('expected')}, {got}" + (f"; did you mean {close[0]!r}?" if close else "")
    messages = {
        "missing": "required",
        "invalid_key": f"keys must be text, {got}",
        "int_type": f"expected a whole number, {got}",
        "float_type": f"expected a number, {got}",
        "string_type": f"expected text, {got}",
        "greater_than": f"must be greater than {ctx.get('gt')}, {got}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}, {got}",
        "too_short": "must not be empty",
        "string_too_short": "must not be empty",
        "tuple_type": f"expected a list, {got}",
        "list_type": f"expected a list, {got}",
        "model_type": f"expected a mapping, {got}",
        "dict_type": f"expected a mapping, {got}",
    }
    return messages.get(kind, f"{error['msg']}, {got}")


def explain(
    exc: ValidationError,
    *,
    source: str | None,
    root: yaml.Node | None,
    model: type[BaseModel],
    flags: Mapping[str, tuple[str, ...]] | None = None,
) -> ConfigError:
    """The ValidationError as one ConfigError; `flags` maps the flags given (by name) to the key path they set."""
    flags = flags or {}
    errors = exc.errors()
    locs = [tuple(error["loc"]) for error in errors]
    problems: list[tuple[int, ConfigError]] = []
    for error in errors:
        at = (error.get("ctx") or {}).get("at")
        # A model-level error names its key in the context: appended to the model's own place.
        loc = (*tuple(error["loc"]), at) if at else tuple(error["loc"]) or ("",)
        if error["type"] == "invalid_key":
            loc = ()
        elif any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue  # a list that is too short because its item failed: the item's error says why
        message = _describe(error, loc, model)
        flag = next((name for name, path in flags.items() if loc[: len(path)] == path), None)
        if flag is not None:
            problem = error_at(message, source=None, key="--" + flag.replace("_", "-"))
            problems.append((-1, problem))  # the flag is what the admin just typed
            continue
        at, value = _locate(root, loc)
        line = at.start_mark.line + 1 if at is not None else None
        message += _yaml_hint(value, error.get("input"))
        problem = error_at(message, source=source, key=_key_path(loc), line=line)
        problems.append((line or 0, problem))
    problems.sort(key=lambda item: item[0])
    if len(problems) == 1:
        return problems[0][1]
    return ConfigProblems([problem for _, problem in problems])


class ConfigProblems(ConfigError):
    """Several problems found at once: str() is the first and how many more; `problems` lists each one."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first, more = problems[0], len(problems) - 1
        super().__init__(f"{first} (and {more} more problem{'s' if more > 1 else ''})")
        self.key, self.line = first.key, first.line
        self.problems = tuple(problems)


def each_problem(error: ConfigError) -> list[ConfigError]:
    """Every problem an error stands for: itself, or each of a ConfigProblems."""
    return list(error.problems) if isinstance(error, ConfigProblems) else [error]

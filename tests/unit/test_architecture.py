"""The package's shape, checked as the code changes: no import circle between modules of alg/ (imports
under TYPE_CHECKING included), no module reading another module's private names, no function past
MAX_FUNCTION_LINES.  Read from the source text with ast: nothing is imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "alg"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found: dict[str, tuple[Path, ast.Module]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = (path, ast.parse(path.read_text(), str(path)))
    return found


MODULES = _modules()


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _known(name: str) -> str | None:
    """The longest module of the package that `name` names (a.b.c -> a.b when c is an attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> dict[str, list[str]]:
    """Each module of the package that `module` imports, with the names it takes from it."""
    path, tree = MODULES[module]
    is_package = path.name == "__init__.py"
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target and target != module:
                    out.setdefault(target, [])
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, is_package)
            for alias in node.names:
                submodule = _known(f"{source}.{alias.name}")
                target = submodule if submodule and submodule != _known(source) else _known(source)
                if target and target != module:
                    out.setdefault(target, []).append("" if target == submodule else alias.name)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_between_modules() -> None:
    circles = _cycles()
    assert circles == [], "import circles (TYPE_CHECKING imports count too): " + "; ".join(
        " <-> ".join(circle) for circle in circles
    )


def test_the_circle_check_finds_a_circle() -> None:
    # The check itself must be able to fail: two modules importing each other are one circle.
    saved = dict(GRAPH)
    try:
        GRAPH["alg.ftp.wire"] = {**GRAPH["alg.ftp.wire"], "alg.ftp.addresses": []}
        GRAPH["alg.ftp.addresses"] = {**GRAPH["alg.ftp.addresses"], "alg.ftp.wire": []}
        assert ["alg.ftp.addresses", "alg.ftp.wire"] in _cycles()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_module_imports_another_modules_private_names() -> None:
    taken = [
        f"{module} takes {name} from {source}"
        for module, sources in GRAPH.items()
        for source, names in sources.items()
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert taken == []


def _private_reads(module: str) -> list[str]:
    """`other._name` where `other` is an imported module of the package (reading its private name)."""
    path, tree = MODULES[module]
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _known(alias.name) == alias.name:
                    imported[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, path.name == "__init__.py")
            for alias in node.names:
                if _known(f"{source}.{alias.name}") == f"{source}.{alias.name}":
                    imported[alias.asname or alias.name] = f"{source}.{alias.name}"
    return [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} reads {imported[node.value.id]}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in imported
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]


def test_no_module_reads_another_modules_private_attributes() -> None:
    reads = [line for module in MODULES for line in _private_reads(module)]
    assert reads == []


# Public by documentation though spelled with an underscore: namedtuple's API, os._exit.
_PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_exit"}


def test_no_object_reads_anothers_private_members() -> None:
    # `session._transfers` from outside the class is a boundary in the wrong place: give it a method.
    reads = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {ast.unparse(node)}"
        for path, tree in MODULES.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr not in _PUBLIC_UNDERSCORED
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert reads == []


def test_functions_are_short() -> None:
    long = sorted(
        (node.end_lineno - node.lineno + 1, f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
        for path, tree in MODULES.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    )
    assert long == [], f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_settings_are_typed() -> None:
    # The settings model goes in, not Any; its defaults live in the model only, not in getattr(settings, ..., x).
    untyped = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path, _ in MODULES.values()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "getattr(settings" in line or "settings: Any" in line or "settings: object" in line
    ]
    assert untyped == []

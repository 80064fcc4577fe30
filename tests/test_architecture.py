"""The house, checked by parsing the source: every module sits in a layer folder, imports point down
the layers only, adapters go through the facade (never the store, the op log or replication behind
it), the core never imports adapter frameworks, and there are no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import neuralsync

PACKAGE_DIR = Path(neuralsync.__file__).parent
ADAPTER_FRAMEWORKS = {"argparse", "click", "typer", "uvicorn", "starlette", "fastapi", "mcp"}
BASE = {"neuralsync.errors", "neuralsync.model", "neuralsync.utils", "neuralsync.config", "neuralsync.validation",
        "neuralsync.redact", "neuralsync.discovery", "neuralsync.json_input", "neuralsync.textnorm",
        "neuralsync.stages"}
# Bottom to top. A module may import its own layer and the layers below it, nothing above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", tuple(sorted(BASE))),
    ("store", ("neuralsync.store",)),
    ("oplog", ("neuralsync.oplog",)),
    ("search", ("neuralsync.search",)),
    ("replication", ("neuralsync.replication",)),
    ("sessions", ("neuralsync.sessions",)),
    ("services", ("neuralsync.services",)),
    ("facade", ("neuralsync.unified_memory_api", "neuralsync.facade")),
    # The team relay (issue 17): a service of its own on PostgreSQL, beside the memory store rather than on it.
    ("relay", ("neuralsync.relay",)),
    ("adapters", ("neuralsync.cli", "neuralsync.server", "neuralsync.mcp", "neuralsync.integrations",
                  "neuralsync.__main__")),
)
FACADE_LAYER = 7
# What an adapter may import from the core: the facade and the base records, errors and checks.
# The relay's entry point (``neuralsync relay serve|migrate``) is the CLI's one door into the relay service.
ADAPTER_MAY_IMPORT = BASE | {"neuralsync", "neuralsync.unified_memory_api", "neuralsync.relay.run"}
# The relay's own HTTP door and its server runner: the only relay modules that may import a web framework.
RELAY_HTTP = {"neuralsync.relay.app", "neuralsync.relay.run"}
# The facade's parts; an adapter that needs one of them needs a facade method instead.
FACADE_INTERNALS = {"store", "storage", "log", "reads", "replication", "semantic", "recaller", "registry", "feed",
                    "access", "checks"}
HEAVY = {"uvicorn", "starlette", "fastapi", "mcp", "usearch", "sentence_transformers", "wordllama", "torch",
         "click", "httpx"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index of the layer ``module`` belongs to (its folder, or its name for the top-level modules)."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: put it in a layer folder (or add it to BASE)")


def is_adapter(module: str) -> bool:
    """cli/, server/, mcp/, integrations/."""
    return module != "neuralsync" and layer_of(module) == len(LAYERS) - 1


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    names = [f"{base}.{alias.name}" for alias in node.names]
    # `from . import x` names a submodule when one exists; otherwise the import is of `base` itself.
    return [n for n in names if n in _modules()] or [base]


@cache
def imports_of(module: str, include_type_checking: bool = False) -> frozenset[str]:
    """Every absolute module name imported anywhere in ``module`` (function bodies included)."""
    path = _modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = set() if include_type_checking else _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(module, path, node))
    return frozenset(found)


def _internal(module: str) -> set[str]:
    return {name for name in imports_of(module) if name in _modules() and name != module}


def _internal_all(module: str) -> set[str]:
    """Internal imports including type-only ones: a layer must not even name what sits above it."""
    return {name for name in imports_of(module, include_type_checking=True) if name in _modules() and name != module}


def test_the_parser_sees_the_known_imports() -> None:
    assert "neuralsync.store.storage" in imports_of("neuralsync.oplog.log")
    assert "neuralsync.oplog.codec" in imports_of("neuralsync.oplog.log")  # `from . import codec`
    assert "neuralsync.validation" in imports_of("neuralsync.unified_memory_api")
    assert "sqlite3" in imports_of("neuralsync.store.storage")


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m != "neuralsync"))
def test_every_module_imports_only_its_layer_and_the_layers_below(module: str) -> None:
    own = layer_of(module)
    upward = {m for m in _internal_all(module) - {"neuralsync"} if layer_of(m) > own}
    assert not upward, f"{module} ({LAYERS[own][0]}) imports from above: {sorted(upward)}"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m != "neuralsync" and is_adapter(m)))
def test_adapters_reach_the_core_only_through_the_facade(module: str) -> None:
    below = {m for m in _internal_all(module) if not is_adapter(m) and m not in ADAPTER_MAY_IMPORT}
    assert not below, f"{module} imports {sorted(below)}: add a facade method instead"
    path = _modules()[module]
    reached = sorted({node.attr for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                      if isinstance(node, ast.Attribute) and node.attr in FACADE_INTERNALS})
    assert not reached, f"{module} reaches past the facade through .{', .'.join(reached)}"


def test_the_layers_are_folders() -> None:
    for name, prefixes in LAYERS[1:]:
        for prefix in prefixes:
            if prefix != "neuralsync.unified_memory_api":
                assert prefix in _modules(), f"layer {name}: {prefix} is not a package"
    flat = {m for m in _modules() if m.count(".") == 1}
    assert flat <= BASE | {"neuralsync.unified_memory_api", "neuralsync.__main__"} | {
        prefix for _, prefixes in LAYERS for prefix in prefixes}


@pytest.mark.parametrize("module", sorted(m for m in _modules() if not is_adapter(m) and m not in RELAY_HTTP))
def test_core_modules_do_not_import_adapter_frameworks(module: str) -> None:
    tops = {name.split(".")[0] for name in imports_of(module, include_type_checking=True)}
    assert not tops & ADAPTER_FRAMEWORKS, f"{module} imports {sorted(tops & ADAPTER_FRAMEWORKS)}"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if not is_adapter(m)))
def test_core_modules_do_not_import_adapters(module: str) -> None:
    assert not {m for m in _internal(module) if is_adapter(m)}


@pytest.mark.parametrize("module", sorted(m for m in _modules()
                                          if not is_adapter(m) and m not in ("neuralsync",
                                                                             "neuralsync.unified_memory_api")))
def test_only_adapters_import_the_facade(module: str) -> None:
    assert "neuralsync.unified_memory_api" not in _internal(module)


def _cycles() -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (lazy imports included)."""
    graph = {m: _internal(m) - {"neuralsync"} for m in _modules() if m != "neuralsync"}

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return seen

    reach = {m: reachable(m) for m in graph}
    groups = {frozenset({m} | {n for n in reach[m] if m in reach[n]}) for m in graph if m in reach[m]}
    return sorted(sorted(g) for g in groups)


def test_no_import_cycles_among_modules() -> None:
    assert _cycles() == []


def test_importing_the_package_stays_light() -> None:
    code = ("import sys, neuralsync\n"
            "print(sorted(m for m in sys.modules if m == 'sqlite3' or m.startswith('neuralsync.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['neuralsync.utils']"


def test_the_facade_does_not_import_heavy_dependencies() -> None:
    code = ("import sys, neuralsync.unified_memory_api\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"

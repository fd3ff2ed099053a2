"""The README's architecture map, held against the code: which package may import which.

Imports are read with `ast` (what a module imports at run time; imports under
`if TYPE_CHECKING:` are annotations only and are allowed to reach further down).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "c_app"

# part -> the parts of c_app it may import (a part is a top-level module or package of c_app).
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "errors": set(),
    "retrieval": {"config"},
    "db": {"config"},
    "security": {"config", "errors", "schemas"},
    "engines": set(),  # the contract (base.py) and the LLM's prompt helper only, below
    "schemas": {"engines"},
    "privacy": {"engines", "config"},  # personal-data masking: an engine wrapper and a log filter
    "observability": {"config", "engines"},  # metrics, traces, JSON logs; the model wrapper sees the contract
    "services": {
        "config",
        "errors",
        "db",
        "retrieval",
        "engines",
        "schemas",
        "security",
        "privacy",
        "observability",
    },
    "container": {"config", "db", "engines", "retrieval", "services", "privacy", "observability"},
    "api": {
        "config",
        "errors",
        "container",
        "services",
        "schemas",
        "security",
        "engines",
        "privacy",
        "web",
        "observability",
    },
    "cli": {"config", "container", "errors", "services", "privacy"},  # privacy: `serve`'s log filters
    "main": {"api", "config", "container", "schemas", "privacy", "observability"},
}


def part_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names."""
    if node.level == 0:
        return node.module or ""
    package = ["c_app", *path.relative_to(PACKAGE).parent.parts]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("c_app"))
        elif isinstance(node, ast.ImportFrom):
            module = resolve(path, node)
            if module.startswith("c_app"):
                found.add(module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_what_the_map_allows(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0].removesuffix(".py")
    if own == "__init__":
        return
    allowed = ALLOWED[own] | {own}
    imported = {part_of(module) for module in runtime_imports(path)} - {""}
    if own == "engines":
        # An engine sees the contract and nothing else; the contract sees nothing at all.
        engine_imports = {m for m in runtime_imports(path) if m.startswith("c_app.engines.")}
        allowed_engine = {"c_app.engines.base"}
        if rel.name == "base.py":
            allowed_engine = set()
        elif rel.name == "prompt.py":
            allowed_engine = {"c_app.engines.base"}
        elif rel.name == "llm_responder.py":
            allowed_engine = {"c_app.engines.base", "c_app.engines.prompt"}
        assert engine_imports <= allowed_engine, f"{rel} imports {sorted(engine_imports - allowed_engine)}"
    assert imported <= allowed, f"{rel} imports {sorted(imported - allowed)}, outside the map"

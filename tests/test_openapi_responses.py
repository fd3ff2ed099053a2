"""Every route documents what it answers, and the routers stay clear of storage.

1. Each operation in the OpenAPI document has a 2XX response with a JSON schema (not the empty `{}`
   FastAPI writes for a route returning a bare Response), except routes that do not answer JSON:
   the event streams, the file routes, the chat page and the knowledge-base export.
2. No module under c_app/api imports c_app.db: routes speak schemas; rows become wire models in
   c_app/schemas (parsed with ast, so an import inside a function or `if` counts too).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from c_app.main import create_app

NOT_JSON = {
    ("POST", "/api/v1/chat/stream"),  # Server-Sent Events
    ("GET", "/api/v1/chat/session/{session_id}/events"),  # Server-Sent Events (issue 10)
    ("GET", "/api/v1/agent/events"),  # Server-Sent Events (issue 10)
    ("POST", "/v1/chat/completions"),  # JSON or Server-Sent Events, as the client asks
    ("GET", "/static/uploads/{name}"),
    ("GET", "/download/{filename}"),
    ("GET", "/chat"),
    ("GET", "/api/v1/admin/knowledge/export"),  # a jsonl or csv file
    ("GET", "/api/v1/admin/customers/{user_id}/export"),  # a zip archive
    ("GET", "/metrics"),  # Prometheus' text format
    ("GET", "/api/v1/chat/session/{session_id}/events"),  # Server-Sent Events (a customer's live events)
    ("GET", "/api/v1/agent/events"),  # Server-Sent Events (an agent's live events)
}
API_DIR = Path(__file__).resolve().parent.parent / "c_app" / "api"


def _json_schema(response: dict[str, Any]) -> dict[str, Any] | None:
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    return schema or None  # {} describes nothing


def test_every_operation_documents_a_json_answer(make_settings):
    spec = create_app(make_settings()).openapi()
    undocumented: list[str] = []
    operations = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operations += 1
            if (method.upper(), path) in NOT_JSON:
                continue
            successes = {
                status: response
                for status, response in operation["responses"].items()
                if status.startswith("2") or status == "2XX"
            }
            if not any(_json_schema(response) for response in successes.values()):
                undocumented.append(f"{method.upper()} {path}")
    assert operations > 25
    assert not undocumented, f"no JSON schema for a 2XX answer: {undocumented}"


def test_degraded_health_is_documented(make_settings):
    spec = create_app(make_settings()).openapi()
    responses = spec["paths"]["/api/v1/chat/health"]["get"]["responses"]
    assert (
        _json_schema(responses["200"])
        == _json_schema(responses["503"])
        == {"$ref": "#/components/schemas/HealthResponse"}
    )


def _imported_modules(path: Path) -> list[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(API_DIR.parent.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append(module)
            # `from .. import db` imports the module c_app.db too.
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_imported_modules_resolves_relative_imports():
    names = _imported_modules(API_DIR / "v1" / "admin.py")
    assert "c_app.schemas.knowledge" in names and "c_app.api.deps" in names


def test_routers_do_not_import_the_database_layer():
    offenders = [
        f"{path.relative_to(API_DIR.parent.parent)}: {name}"
        for path in sorted(API_DIR.rglob("*.py"))
        for name in _imported_modules(path)
        if name == "c_app.db" or name.startswith("c_app.db.")
    ]
    assert not offenders, offenders

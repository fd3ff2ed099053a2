"""Every route, as no user and as the wrong user (AUTH_MODE=jwt): refused, and nothing of the victim leaks.

The walk is driven by the app's own OpenAPI spec plus its WebSocket routes, so a route added later
is walked too; one added without the acting-user check fails here (the last tests prove the walker
notices). Requests are built from the schema: the victim's real ids go wherever a parameter or
field names a user, session, message, memory or file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.routing import APIWebSocketRoute
from starlette.routing import WebSocketRoute

from .security_utils import bearer, jwt_settings, token, websocket_handshake
from .utils import chat_body, png_bytes, uploaded

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

# Routes anyone may call: they hold no customer's data.
PUBLIC = {
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/ready"),  # readiness for load balancers and orchestrators: check states only
    ("GET", "/api/v1/chat/health"),
    ("GET", "/v1/models"),
    ("GET", "/ready"),  # the load balancer's readiness probe: this replica's checks, nobody's data
}
# Routes any signed-in caller may call: aggregate figures, nobody's data.
ANY_SIGNED_IN = {("GET", "/api/v1/chat/stats")}
ADMIN_PREFIX = "/api/v1/admin/"
SECRET_MARKERS = ("VICTIM-SECRET",)
VICTIM = "victim-user"
ATTACKER = "attacker-user"


@dataclass
class Victim:
    """Real data of the victim, whose ids the walker puts into every request."""

    values: dict[str, Any] = field(default_factory=dict)


async def make_victim(client: httpx.AsyncClient) -> Victim:
    auth = bearer(token(VICTIM))
    created = await client.post(
        "/api/v1/chat/session/create", json={"user_id": VICTIM, "title": "VICTIM-SECRET-TITLE"}, headers=auth
    )
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]
    streamed = await client.post(
        "/api/v1/chat/stream",
        json=chat_body("VICTIM-SECRET 我的地址", user_id=VICTIM, session_id=session_id),
        headers=auth,
    )
    assert streamed.status_code == 200, streamed.text
    memory = await client.post(
        "/api/v1/chat/memory/add",
        json={"user_id": VICTIM, "content": "VICTIM-SECRET-MEMORY 住在北京"},
        headers=auth,
    )
    assert memory.status_code == 200, memory.text
    name = (await uploaded(client, user_id=VICTIM, session_id=session_id, headers=auth))["filename"]
    history = await client.get(f"/api/v1/chat/session/{session_id}/messages", headers=auth)
    message_id = history.json()["messages"][-1]["id"] if history.status_code == 200 else 1
    return Victim(
        values={
            "user_id": VICTIM,
            "user": VICTIM,
            "session_id": session_id,
            "x-session-id": session_id,
            "memory_id": memory.json()["data"]["memory_id"],
            "message_id": message_id,
            "name": name,
            "filename": name,
            "entry_id": 1,
            "messages": [{"role": "user", "content": "你好"}],
            "message": {"role": "user", "content": "你好"},
            "content": "你好",
            "query": "地址",
            "title": "标题",
        }
    )


class SchemaExamples:
    """Minimal valid values from the app's OpenAPI schemas, with the victim's ids where names match."""

    def __init__(self, spec: dict[str, Any], victim: Victim) -> None:
        self.components = spec.get("components", {}).get("schemas", {})
        self.victim = victim

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def value(self, schema: dict[str, Any], name: str | None = None, depth: int = 0) -> Any:
        if name is not None and name.lower() in self.victim.values:
            return copy.deepcopy(self.victim.values[name.lower()])
        schema = self.resolve(schema)
        if "enum" in schema:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [s for s in schema[key] if self.resolve(s).get("type") != "null"]
                return self.value(options[0], None, depth) if options else None
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.resolve(part))
            return self.value(merged, None, depth)
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            required = set(schema.get("required", []))
            props = schema.get("properties", {})
            return {
                key: self.value(sub, key, depth + 1)
                for key, sub in props.items()
                if key in required or key.lower() in self.victim.values
            }
        if kind == "array":
            return [
                self.value(schema.get("items", {}), None, depth + 1)
                for _ in range(max(1, schema.get("minItems", 1)))
            ]
        if kind == "integer":
            return max(1, int(schema.get("minimum", 1)))
        if kind == "number":
            return max(1.0, float(schema.get("minimum", 1)))
        if kind == "boolean":
            return False
        if kind == "string":
            return "x" * max(1, int(schema.get("minLength", 1)))
        return "x"


OBJECT_IDS = ("session_id", "x-session-id", "memory_id", "message_id", "name", "filename")


def build_request(
    spec: dict[str, Any],
    path: str,
    method: str,
    operation: dict[str, Any],
    ex: SchemaExamples,
    *,
    optional: bool = True,
) -> dict[str, Any]:
    url = path
    query: dict[str, Any] = {}
    headers: dict[str, str] = {}
    for param in operation.get("parameters", []):
        name, where = param["name"], param["in"]
        known = optional and name.lower() in ex.victim.values
        if where == "path":
            url = url.replace("{" + name + "}", str(ex.value(param.get("schema", {}), name)))
        elif where == "query" and (param.get("required") or known):
            query[name] = ex.value(param.get("schema", {}), name)
        elif where == "header" and (param.get("required") or known):
            headers[name] = str(ex.value(param.get("schema", {}), name))
    request: dict[str, Any] = {"method": method.upper(), "url": url, "params": query, "headers": headers}
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        request["json"] = ex.value(content["application/json"].get("schema", {}))
    elif "multipart/form-data" in content:
        schema = ex.resolve(content["multipart/form-data"].get("schema", {}))
        files, data = {}, {}
        for key, sub in schema.get("properties", {}).items():
            sub = ex.resolve(sub)
            if sub.get("format") == "binary" or sub.get("contentMediaType") == "application/octet-stream":
                files[key] = ("p.png", png_bytes(), "image/png")
            elif key in schema.get("required", []) or key.lower() in ex.victim.values:
                data[key] = str(ex.value(sub, key))
        request["files"], request["data"] = files, data
    return request


async def walk(app: FastAPI, client: httpx.AsyncClient, victim: Victim) -> list[str]:
    """Every problem found: a route that serves no user, or serves the wrong user, or answers 5xx."""
    app.openapi_schema = None  # routes may have been added since the spec was first built
    spec = app.openapi()
    ex = SchemaExamples(spec, victim)
    problems: list[str] = []
    attacker = bearer(token(ATTACKER))
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            key = (method.upper(), path)
            if key in PUBLIC:
                continue
            request = build_request(spec, path, method, operation, ex)
            label = f"{key[0]} {path}"

            anonymous = await client.request(**request)
            if anonymous.status_code != 401:
                problems.append(f"{label}: no user got {anonymous.status_code}, not 401")
            if key in ANY_SIGNED_IN:
                continue
            allowed = {401, 403, 404} if path.startswith(ADMIN_PREFIX) else {403, 404}
            # 1. The attacker names the victim (with and without optional parameters such as ?user_id=).
            variants = [request, build_request(spec, path, method, operation, ex, optional=False)]
            for variant in variants:
                variant["headers"] = {**variant["headers"], **attacker}
                wrong = await client.request(**variant)
                if wrong.status_code not in allowed:
                    problems.append(f"{label}: wrong user got {wrong.status_code} {wrong.text[:200]}")
                if any(marker in wrong.text for marker in SECRET_MARKERS):
                    problems.append(f"{label}: wrong user saw the victim's data")
            # 2. The attacker acts as itself but points at the victim's session, memory, message or file.
            own = SchemaExamples(spec, Victim({**victim.values, "user_id": ATTACKER, "user": ATTACKER}))
            variant = build_request(spec, path, method, operation, own)
            variant["headers"] = {**variant["headers"], **attacker}
            names_object = any(
                f"{{{name}}}" in path
                or name in variant.get("params", {})
                or name in variant["headers"]
                or (isinstance(variant.get("json"), dict) and name in variant["json"])
                or name in variant.get("data", {})
                for name in OBJECT_IDS
            )
            mine = await client.request(**variant)
            if names_object and mine.status_code not in allowed:
                problems.append(
                    f"{label}: a user reached another's object: {mine.status_code} {mine.text[:200]}"
                )
            if mine.status_code >= 500 or any(marker in mine.text for marker in SECRET_MARKERS):
                problems.append(
                    f"{label}: acting as itself, the attacker got {mine.status_code} or victim data"
                )
    for route in app.routes:
        if isinstance(route, APIWebSocketRoute | WebSocketRoute):
            path = route.path
            for name in route.param_convertors:
                path = path.replace("{" + name + "}", str(victim.values.get(name, "x")))
            answer = await websocket_handshake(app, path)
            if answer["type"] == "websocket.accept":
                problems.append(f"WS {route.path}: accepted a socket with no user")
            wrong = await websocket_handshake(
                app,
                path,
                query=f"user_id={VICTIM}&session_id={victim.values['session_id']}",
                headers=attacker,
            )
            if wrong["type"] == "websocket.http.response.start" and wrong["status"] >= 500:
                problems.append(f"WS {route.path}: wrong user got {wrong['status']}")
    return problems


async def test_every_route_refuses_no_user_and_the_wrong_user(start_app: Any) -> None:
    app, client = await start_app(**jwt_settings(admin_token="admin-token-for-tests", rate_limit_stream="0"))
    victim = await make_victim(client)
    problems = await walk(app, client, victim)
    assert problems == []
    # The walk covered the routes that hold customer data (a spec change cannot empty it silently).
    walked = set(app.openapi()["paths"])
    for path in (
        "/api/v1/chat/session/{session_id}",
        "/api/v1/chat/memory/private/{user_id}",
        "/static/uploads/{name}",
    ):
        assert path in walked


async def test_the_walker_flags_a_route_added_without_the_check(start_app: Any) -> None:
    app, client = await start_app(**jwt_settings(rate_limit_stream="0"))
    victim = await make_victim(client)

    async def leaky_sessions(user_id: str) -> dict[str, Any]:
        """A route that forgot the acting-user dependency."""
        rows = await app.state.services.sessions.list_for_user(user_id, limit=10, offset=0)
        return {"titles": [row.title for row in rows]}

    app.add_api_route("/api/v1/chat/leak/{user_id}", leaky_sessions, methods=["GET"])

    async def open_socket(websocket: WebSocket) -> None:
        await websocket.accept()

    app.add_api_websocket_route("/ws/leak", open_socket)
    problems = await walk(app, client, victim)
    assert any(p.startswith("GET /api/v1/chat/leak/{user_id}: no user got 200") for p in problems), problems
    assert any(p.startswith("GET /api/v1/chat/leak/{user_id}: wrong user got 200") for p in problems), (
        problems
    )
    assert any("/api/v1/chat/leak/{user_id}: wrong user saw the victim's data" in p for p in problems), (
        problems
    )
    assert any(p.startswith("WS /ws/leak") for p in problems), problems


AGENT_PREFIX = "/api/v1/agent/"
STREAMS = ("/api/v1/agent/events",)  # held open: walked live in tests/test_agents_live.py


async def test_agents_and_customers_stay_apart(start_app: Any) -> None:
    """Issue 10's roles: a customer token gets 403 on every agent route; an agent token (role agent or
    supervisor) is refused on every customer route and WebSocket, and is served on its own routes."""
    app, client = await start_app(**jwt_settings(admin_token="admin-token-for-tests", rate_limit_stream="0"))
    victim = await make_victim(client)
    app.openapi_schema = None
    spec = app.openapi()
    ex = SchemaExamples(spec, victim)
    customer = bearer(token(VICTIM))
    agents = [bearer(token("agent-1", role="agent", name="小王")), bearer(token("sup-1", role="supervisor"))]
    problems: list[str] = []
    walked_agent_routes = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete") or (method.upper(), path) in PUBLIC:
                continue
            label = f"{method.upper()} {path}"
            request = build_request(spec, path, method, operation, ex)
            if path.startswith(AGENT_PREFIX):
                walked_agent_routes += 1
                as_customer = await client.request(
                    **{**request, "headers": {**request["headers"], **customer}}
                )
                if as_customer.status_code != 403 or "仅限客服人员访问" not in as_customer.text:
                    problems.append(f"{label}: a customer got {as_customer.status_code}")
                if path in STREAMS:
                    continue
                for agent in agents:
                    served = await client.request(**{**request, "headers": {**request["headers"], **agent}})
                    if served.status_code in (401, 403) or served.status_code >= 500:
                        problems.append(f"{label}: an agent got {served.status_code} {served.text[:200]}")
                continue
            if path.startswith(ADMIN_PREFIX):
                continue
            for agent in agents:
                refused = await client.request(**{**request, "headers": {**request["headers"], **agent}})
                if refused.status_code != 403:
                    problems.append(f"{label}: an agent acting as a customer got {refused.status_code}")
                if any(marker in refused.text for marker in SECRET_MARKERS):
                    problems.append(f"{label}: an agent saw the customer's data")
    for route in app.routes:
        if isinstance(route, APIWebSocketRoute | WebSocketRoute):
            answer = await websocket_handshake(app, route.path, headers=agents[0])
            if answer["type"] == "websocket.accept":
                problems.append(f"WS {route.path}: accepted an agent as a customer")
    assert problems == [], "\n".join(problems)
    assert walked_agent_routes >= 10

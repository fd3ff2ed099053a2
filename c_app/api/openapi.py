"""The OpenAPI document says what clients really get: every error, 422 included, in the seed's envelope.

FastAPI documents validation errors as `{"detail": [...]}`; our handlers answer with the envelope.
This rewrites the generated document once, so schema-driven clients and schemathesis see the truth.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ENVELOPE_NAME = "ErrorEnvelope"
ENVELOPE_SCHEMA: dict[str, Any] = {
    "title": ENVELOPE_NAME,
    "type": "object",
    "required": ["success", "error", "timestamp"],
    "properties": {
        "success": {"type": "boolean", "const": False},
        "error": {
            "type": "object",
            "required": ["code", "message", "type"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "type": {"type": "string"},
                "details": {},
            },
        },
        "timestamp": {"type": "string"},
    },
}
_ERROR_DESCRIPTIONS = {"4XX": "请求错误（统一错误格式）", "5XX": "服务器错误或暂时不可用（统一错误格式）"}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        spec.setdefault("components", {}).setdefault("schemas", {})[ENVELOPE_NAME] = ENVELOPE_SCHEMA
        spec["components"]["schemas"].pop("HTTPValidationError", None)
        spec["components"]["schemas"].pop("ValidationError", None)
        ref = {"$ref": f"#/components/schemas/{ENVELOPE_NAME}"}
        for item in spec.get("paths", {}).values():
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                if "422" in responses:
                    responses["422"] = {
                        "description": "请求参数格式错误",
                        "content": {"application/json": {"schema": ref}},
                    }
                for status, description in _ERROR_DESCRIPTIONS.items():
                    responses.setdefault(
                        status, {"description": description, "content": {"application/json": {"schema": ref}}}
                    )
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]

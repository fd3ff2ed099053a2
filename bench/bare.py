"""The baselines c_app's turn is measured against (issue 12): the least a server can do for a turn.

    python bench/bare.py relay --port 9200 --model-url http://127.0.0.1:9100/v1
    python bench/bare.py fixed --port 9201

relay - a bare Starlette relay to the model: POST /api/v1/chat/stream parses the seed's request,
        sends the question to the OpenAI-compatible model (one pooled HTTP client), and relays its
        stream in the seed's plain SSE framing (`data: <piece>` per chunk, `data: [DONE]` last).
        No database, no retrieval, no history.
fixed - a bare Starlette endpoint that parses the same request and streams a fixed ten-piece
        answer in the same framing, with no database: what the offline responder's turn is held to.

Both run under uvicorn (one worker, the options bench/load.py gives c_app), so the HTTP server's
own cost is on both sides of the ratio.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# Ten pieces, as the knowledge-base responder cuts an answer of the sample knowledge base.
FIXED_PIECES = [
    "您好，",
    "退货请在订单详情页点击“申请售后”，",
    "选择退货原因并上传照片。",
    "审核通过后，",
    "请在七天内寄回商品，",
    "并填写物流单号。",
    "仓库签收后一到三个工作日内完成退款，",
    "款项原路退回。",
    "如有疑问，",
    "可以随时联系我们。",
]


def _frame(text: str) -> str:
    return "data: " + text.replace("\n", "\\n").replace("\r", "\\r") + "\n\n"


async def _checked(request: Request) -> dict[str, Any] | Response:
    """The seed's request, checked as far as a turn needs it (ids and a text message)."""
    try:
        body = await request.json()
        user_id, session_id = body["user_id"], body["session_id"]
        content = body["message"]["content"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"success": False, "error": {"code": 422}}, status_code=422)
    if not (isinstance(user_id, str) and isinstance(session_id, str) and isinstance(content, str)):
        return JSONResponse({"success": False, "error": {"code": 422}}, status_code=422)
    return {"user_id": user_id, "session_id": session_id, "text": content}


def fixed_app() -> Starlette:
    async def stream(request: Request) -> Response:
        checked = await _checked(request)
        if isinstance(checked, Response):
            return checked

        async def body() -> AsyncIterator[str]:
            for piece in FIXED_PIECES:
                yield _frame(piece)
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/api/v1/chat/stream", stream, methods=["POST"]), _health()])


def relay_app(model_url: str, model: str = "bench-model") -> Starlette:
    client = httpx.AsyncClient(base_url=model_url, timeout=60, limits=httpx.Limits(max_connections=None))

    async def stream(request: Request) -> Response:
        checked = await _checked(request)
        if isinstance(checked, Response):
            return checked
        payload = {
            "model": model,
            "stream": True,
            "messages": [{"role": "user", "content": checked["text"]}],
        }

        async def body() -> AsyncIterator[str]:
            async with client.stream("POST", "/chat/completions", json=payload) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    for choice in json.loads(data).get("choices") or ():
                        if content := (choice.get("delta") or {}).get("content"):
                            yield _frame(content)
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/api/v1/chat/stream", stream, methods=["POST"]), _health()])


def _health() -> Route:
    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    return Route("/health", health)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["relay", "fixed"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-url", default="http://127.0.0.1:9100/v1")
    args = parser.parse_args()
    app = relay_app(args.model_url) if args.kind == "relay" else fixed_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=2048)


if __name__ == "__main__":
    main()

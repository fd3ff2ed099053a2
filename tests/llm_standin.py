"""An OpenAI-compatible stand-in model server for tests and benches (real HTTP and SSE on loopback).

It streams, fails, hangs, cuts a stream short and calls tools on cue, and records every request.
Cue it by appending behaviours to `standin.script` (one per incoming request, in order); with an
empty script it streams `standin.default_text` in small chunks.

    {"kind": "stream", "text": "...", "chunk": 2, "delay": 0.0}
    {"kind": "error", "status": 500}                   # also 429, 401 ...
    {"kind": "hang"}                                    # never answers (until the client goes)
    {"kind": "hang_after", "text": "...", "chunk": 2}   # streams the text, then hangs (likewise)
    {"kind": "cut", "text": "...", "chunk": 2}          # streams the text, then drops the connection
    {"kind": "tool", "name": "search_knowledge", "arguments": "{\\"query\\": \\"退货\\"}"}
    {"kind": "slow", "text": "...", "chunk": 1, "delay": 0.2}

A hang also ends when the stand-in is closed: serve it with `with standin.serving():` (the
`standin` fixture does), so a test that leaves a request hanging does not hold up the server's
shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class _WatchedStream(StreamingResponse):
    """Starlette's stream with its disconnect watcher on (the path it takes for pre-2.4 ASGI servers),
    so the stand-in notices at once when a client closes a stream, as a real provider would."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope = {**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}
        await super().__call__(scope, receive, send)


class StandIn:
    def __init__(self, *, model: str = "standin-model") -> None:
        self.model = model
        self.base_url = ""  # set by whoever serves it
        self.default_text = "您好，这是模型的回答。"
        self.script: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnects: list[float] = []  # monotonic times at which a streaming client went away
        self.embedding_calls = 0
        self.embedding_inputs: list[str] = []  # every text it was asked to embed, in order
        self.embeddings_down = False
        self.lock = threading.Lock()
        # Set by close(), from any thread; every hang waits on it (created in the serving loop).
        self._closing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        with self.lock:
            self._loop, self._closing = asyncio.get_running_loop(), asyncio.Event()
            if self._closed:
                self._closing.set()
        yield

    def close(self) -> None:
        """End every hang now and from now on (callable from any thread)."""
        with self.lock:
            self._closed = True
            loop, closing = self._loop, self._closing
        if loop is not None and closing is not None and not loop.is_closed():
            loop.call_soon_threadsafe(closing.set)

    @contextmanager
    def serving(self) -> Iterator[str]:
        """Serve on a loopback port (tests/servers.py); yields and sets `base_url` (ending in /v1).
        On exit the stand-in is closed first, so hanging requests end and the server stops at once."""
        from .servers import serve

        with serve(self.app) as base:
            self.base_url = base + "/v1"
            try:
                yield self.base_url
            finally:
                self.close()

    async def _hang(self, request: Request | None = None) -> bool:
        """Wait until the stand-in is closed or, given the request, its client goes away (or an
        hour passes). True when the client went away."""
        closing = self._closing or asyncio.Event()
        waits = {asyncio.ensure_future(closing.wait())}
        gone = asyncio.ensure_future(_client_gone(request)) if request is not None else None
        if gone is not None:
            waits.add(gone)
        try:
            await asyncio.wait(waits, timeout=3600, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return gone is not None and gone.done() and not gone.cancelled()

    def next_behaviour(self) -> dict[str, Any]:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        return {"kind": "stream", "text": self.default_text, "chunk": 1}

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]}
        )

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.embedding_calls += 1
        if self.embeddings_down:
            return JSONResponse({"error": {"message": "down"}}, status_code=503)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        self.embedding_inputs.extend(inputs)
        data = [
            {"object": "embedding", "index": i, "embedding": hashed_embedding(text)}
            for i, text in enumerate(inputs)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", ""),
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        behaviour = self.next_behaviour()
        kind = behaviour["kind"]
        if kind == "error":
            status = behaviour.get("status", 500)
            return JSONResponse(
                {"error": {"message": "stand-in failure", "type": "server_error"}}, status_code=status
            )
        if kind == "hang":
            client_went = True  # also when the wait is cancelled
            try:
                client_went = await self._hang(request)
            finally:
                if client_went:
                    self.disconnects.append(time.monotonic())
            if client_went:
                return Response(status_code=499)  # nobody is there to read it
            return JSONResponse({"error": {"message": "stand-in closed"}}, status_code=503)
        if not body.get("stream"):
            text = behaviour.get("text", self.default_text)
            return JSONResponse(
                {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 10,
                        "completion_tokens": len(text),
                        "total_tokens": 10 + len(text),
                    },
                }
            )
        return _WatchedStream(self._stream(behaviour), media_type="text/event-stream")

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        payload = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def _stream(self, behaviour: dict[str, Any]) -> AsyncIterator[str]:
        kind = behaviour["kind"]
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            if kind == "tool":
                calls = behaviour.get("calls") or [behaviour]
                for index, call in enumerate(calls):
                    yield self._chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "id": f"call_{index}",
                                    "type": "function",
                                    "function": {"name": call["name"], "arguments": ""},
                                }
                            ]
                        }
                    )
                    arguments = call.get("arguments", "{}")
                    for start in range(0, len(arguments), 5):
                        yield self._chunk(
                            {
                                "tool_calls": [
                                    {"index": index, "function": {"arguments": arguments[start : start + 5]}}
                                ]
                            }
                        )
                yield self._chunk({}, "tool_calls")
            else:
                text = behaviour.get("text", self.default_text)
                size = max(1, behaviour.get("chunk", 2))
                delay = behaviour.get("delay", 0.0)
                for start in range(0, len(text), size):
                    yield self._chunk({"content": text[start : start + size]})
                    if delay:
                        await asyncio.sleep(delay)
                if kind == "cut":
                    raise ConnectionAbortedError("stand-in cuts the stream")
                if kind == "hang_after":
                    # The stream's disconnect watcher cancels this when the client goes; closing
                    # the stand-in ends the stream unfinished.
                    await self._hang()
                    return
                yield self._chunk({}, "stop")
            usage = {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
            yield (
                "data: "
                + json.dumps(
                    {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": self.model,
                        "choices": [],
                        "usage": usage,
                    }
                )
                + "\n\n"
            )
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            self.disconnects.append(time.monotonic())
            raise


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected (the request body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def hashed_embedding(text: str, dims: int = 64) -> list[float]:
    """A deterministic bag-of-characters embedding: texts sharing characters point the same way."""
    vector = [0.0] * dims
    for ch in text:
        digest = hashlib.blake2b(ch.encode(), digest_size=4).digest()
        vector[int.from_bytes(digest, "little") % dims] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def main() -> None:
    """Serve a stand-in on a port: `python -m tests.llm_standin --port 9100 --chunks 50`."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=50, help="chunks per streamed answer")
    args = parser.parse_args()
    stand = StandIn()
    stand.default_text = "好" * args.chunks
    stand.requests = _Discard()  # a bench sends many requests: do not keep them
    stand.headers = _Discard()
    uvicorn.run(stand.app, host="127.0.0.1", port=args.port, log_level="warning")


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()

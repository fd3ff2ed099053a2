"""An OpenAI-compatible door: POST /v1/chat/completions and GET /v1/models.

Any OpenAI client or chat UI can talk to the customer-service bot. The turn is the same as on
/api/v1/chat/stream (retrieval, memory, storage). Conversations are kept, not stateless:
- the user is the request's `user` field (required);
- the session is the `X-Session-Id` header, else `metadata.session_id`, else one standing
  session per user (`openai-<user>`);
- only the last user message of `messages` is the customer's new message; earlier turns come from
  the stored history of the session (what a client re-sends is not trusted or duplicated).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..engines.prompt import estimate_tokens
from ..errors import BadRequest
from ..schemas.customer import ChatMessage
from ..schemas.events import DeltaEvent, DoneEvent, ErrorEvent
from .deps import ActorDep, ServicesDep
from .streaming import EventStreamResponse
from .turns import open_turn

router = APIRouter(prefix="/v1", tags=["OpenAI 兼容接口"])

MODEL_ID = "c_app-customer-service"


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = MODEL_ID
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=200)
    stream: bool = False
    user: str | None = Field(default=None, max_length=128)
    metadata: dict[str, Any] | None = None


def _customer_message(messages: list[dict[str, Any]]) -> ChatMessage:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str | list) and content:
                return ChatMessage(role="user", content=content)
            break
    raise BadRequest("messages 中缺少用户消息")


def _completion_id(message_id: int | None) -> str:
    return f"chatcmpl-{message_id if message_id is not None else int(time.time() * 1000)}"


def _usage(prompt: str, answer: str, usage: dict[str, Any] | None) -> dict[str, int]:
    if usage and "prompt_tokens" in usage:
        return {k: int(usage[k]) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    prompt_tokens, completion_tokens = estimate_tokens(prompt), estimate_tokens(answer)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "c_app"


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


@router.get("/models")
async def list_models() -> ModelList:
    """OpenAI 兼容：可用模型列表（即本客服机器人）。"""
    return ModelList(data=[ModelCard(id=MODEL_ID)])


class CompletionMessage(BaseModel):
    role: str = "assistant"
    content: str


class CompletionChoice(BaseModel):
    index: int = 0
    message: CompletionMessage
    finish_reason: str


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """The answer when `stream` is false (with `stream: true`, `chat.completion.chunk` events)."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


@router.post(
    "/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": ChatCompletion,
            "content": {"text/event-stream": {}},
            "description": "`stream: false`: one chat.completion; `stream: true`: chat.completion.chunk events",
        }
    },
)
async def chat_completions(
    request: CompletionRequest,
    http_request: Request,
    services: ServicesDep,
    actor: ActorDep,
    x_session_id: str | None = Header(default=None, max_length=128),
) -> JSONResponse | EventStreamResponse:
    """OpenAI 兼容的对话接口（支持 stream）；用户取自 `user`，会话取自 `X-Session-Id` 或 metadata。"""
    # With end-user tokens the token names the user; `user` may be left out.
    user_id = actor.act_for(request.user or actor.user_id or "")
    session_id = x_session_id or str((request.metadata or {}).get("session_id") or "") or f"openai-{user_id}"
    if len(session_id) > 128:
        raise BadRequest("会话ID过长")
    message = _customer_message(request.messages)
    turn = await open_turn(http_request, actor, user_id=user_id, session_id=session_id, message=message)
    created = int(time.time())

    if not request.stream:
        answer: list[str] = []
        done: DoneEvent | None = None
        failed = False
        async for event in services.chat.answer(turn):
            if isinstance(event, DeltaEvent):
                answer.append(event.text)
            elif isinstance(event, ErrorEvent):
                failed = True
            elif isinstance(event, DoneEvent):
                done = event
        text = "".join(answer)
        return JSONResponse(
            content={
                "id": _completion_id(done.message_id if done else None),
                "object": "chat.completion",
                "created": created,
                "model": MODEL_ID,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "error" if failed else "stop",
                    }
                ],
                "usage": _usage(turn.text, text, done.usage if done else None),
            },
            headers={"X-Session-Id": session_id},
        )

    async def chunks() -> AsyncIterator[str]:
        completion_id = _completion_id(turn.message_id)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL_ID,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        answer: list[str] = []
        async for event in services.chat.answer(turn):
            if isinstance(event, DeltaEvent):
                answer.append(event.text)
                yield chunk({"content": event.text})
            elif isinstance(event, ErrorEvent):
                error = {"error": {"message": event.message, "type": "server_error"}}
                yield f"data: {json.dumps(error, ensure_ascii=False)}\n\n"
            elif isinstance(event, DoneEvent):
                usage = _usage(turn.text, "".join(answer), event.usage)
                yield chunk({}, "stop" if event.status != "interrupted" else "length", usage=usage)
        yield "data: [DONE]\n\n"

    return EventStreamResponse(chunks(), headers={"X-Session-Id": session_id})

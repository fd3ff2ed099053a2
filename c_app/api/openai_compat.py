"""An OpenAI-compatible door: POST /v1/chat/completions and GET /v1/models.

Any OpenAI client or chat UI can talk to the customer-service bot. The turn is the same as on
/api/v1/chat/stream (retrieval, memory, storage). Conversations are kept, not stateless:
- the user is the request's `user` field (required);
- the session is the `X-Session-Id` header, else `metadata.session_id`, else one standing
  session per user (`openai-<user>`); every one of them is held to the id rules of the rest of the
  API (schemas/customer.py `valid_id`: 1-128 characters, no control characters, no "/"), 422 if not;
- ids travel in the `X-Session-Id` header (both ways) as they are when they are plain ASCII, else
  as an RFC 8187 ext-value, `UTF-8''` + the UTF-8 bytes percent-encoded (header values are bytes
  read as Latin-1, so a CJK id cannot be sent as it is, and CR/LF would split the response);
- only the last user message of `messages` is the customer's new message; earlier turns come from
  the stored history of the session (what a client re-sends is not trusted or duplicated).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..engines.prompt import estimate_tokens
from ..errors import BadRequest
from ..schemas.customer import ID_MAX, BoundedMetadata, ChatMessage, IdStr, valid_id
from ..schemas.events import DeltaEvent, DoneEvent, ErrorEvent
from .deps import ActorDep, ServicesDep
from .streaming import EventStreamResponse
from .turns import open_turn

router = APIRouter(prefix="/v1", tags=["OpenAI 兼容接口"])

MODEL_ID = "c_app-customer-service"
ID_RULE = f"会话ID须为 1-{ID_MAX} 个字符，不含控制字符和 /"

# RFC 8187 ext-value: charset "UTF-8" (case-insensitive), an empty language, the bytes percent-encoded.
ENCODED_PREFIX = "UTF-8''"
_ATTR_CHARS = "!#$&+-.^_`|~"  # RFC 8187 attr-char besides letters and digits: left as they are
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# An encoded CJK id is up to 9 characters per character (3 UTF-8 bytes, each as %XX), 12 for 4 bytes.
_HEADER_MAX = len(ENCODED_PREFIX) + ID_MAX * 12


def _looks_encoded(value: str) -> bool:
    return value[: len(ENCODED_PREFIX)].upper() == ENCODED_PREFIX.upper()


def session_header(session_id: str) -> str:
    """The `X-Session-Id` header value for a (valid) session id: the id itself when it is plain
    ASCII (what it always was), else `UTF-8''` + its UTF-8 bytes percent-encoded. Also encoded: an
    ASCII id that itself starts with `UTF-8''`, or has spaces at either end (HTTP trims them), so
    the value always reads back unambiguously."""
    if session_id.isascii() and not _looks_encoded(session_id) and session_id == session_id.strip(" \t"):
        return session_id
    return ENCODED_PREFIX + quote(session_id, safe=_ATTR_CHARS, encoding="utf-8")


def _invalid(loc: tuple[str | int, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def _session_from_header(raw: str) -> str:
    """The session id an `X-Session-Id` request header names (the encoding of `session_header`;
    raw UTF-8 bytes, which arrive decoded as Latin-1, are read as UTF-8), or 422."""
    loc = ("header", "x-session-id")
    if _looks_encoded(raw):
        encoded = raw[len(ENCODED_PREFIX) :]
        if _BAD_PERCENT.search(encoded):
            raise _invalid(loc, "会话ID的百分号编码无效")
        try:
            value = unquote(encoded, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise _invalid(loc, "会话ID的百分号编码无效") from None
    elif raw.isascii():
        value = raw
    else:
        try:
            value = raw.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            value = raw  # Latin-1 text after all
    if not valid_id(value):
        raise _invalid(loc, ID_RULE)
    return value


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = MODEL_ID
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=200)
    stream: bool = False
    user: IdStr | None = None
    # Bounded as metadata everywhere else (5 levels, 50 keys, no NUL); `session_id` in it is an id.
    metadata: BoundedMetadata = None

    @field_validator("metadata")
    @classmethod
    def _session_id_is_an_id(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        session_id = (metadata or {}).get("session_id")
        # null or "" means "not given" (the default session), as it always did.
        if session_id is None or session_id == "":
            return metadata
        if not isinstance(session_id, str):
            raise ValueError("metadata.session_id 必须是字符串")  # noqa: TRY004 (pydantic wants ValueError)
        if not valid_id(session_id):
            raise ValueError(ID_RULE)
        return metadata


def _customer_message(messages: list[dict[str, Any]]) -> ChatMessage:
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str | list) and content:
                try:
                    return ChatMessage(role="user", content=content)
                except ValidationError as exc:  # NUL, or parts nested too deep: the client's 422
                    raise RequestValidationError(
                        [
                            {**err, "loc": ("body", "messages", index, *err.get("loc", ()))}
                            for err in exc.errors(
                                include_url=False, include_input=False, include_context=False
                            )
                        ]
                    ) from None
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
    x_session_id: str | None = Header(
        default=None,
        max_length=_HEADER_MAX,
        description="会话ID（1-128 个字符，不含控制字符和 /）；非 ASCII 的ID按 RFC 8187 写作 UTF-8''<百分号编码>",
    ),
) -> JSONResponse | EventStreamResponse:
    """OpenAI 兼容的对话接口（支持 stream）；用户取自 `user`，会话取自 `X-Session-Id` 或 metadata。"""
    # With end-user tokens the token names the user; `user` may be left out.
    user_id = actor.act_for(request.user or actor.user_id or "")
    if x_session_id:
        session_id = _session_from_header(x_session_id)
    else:
        # A string already checked by CompletionRequest, or nothing: the user's standing session.
        session_id = (request.metadata or {}).get("session_id") or f"openai-{user_id}"
        if len(session_id) > ID_MAX:
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
            headers={"X-Session-Id": session_header(session_id)},
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

    return EventStreamResponse(chunks(), headers={"X-Session-Id": session_header(session_id)})

"""The LLM responder: any OpenAI-compatible chat endpoint, through the official `openai` SDK.

Contract with the chat service:
- deltas are yielded the moment the model produces them;
- a failure before the first delta (timeout, refused connection, 5xx, 429, any API error) raises
  UpstreamUnavailable, so a FallbackEngine can let the knowledge base answer instead;
- a failure after the first delta raises UpstreamBroken (the turn reports an error and keeps the
  partial answer);
- cancellation (the client left) closes the upstream HTTP response at once.
Tools run in a bounded loop: search_knowledge, save_customer_fact, transfer_to_human.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI

from .base import (
    ANSWER,
    CLARIFY,
    HANDOFF_MESSAGE,
    PUBLIC,
    Decision,
    Delta,
    EngineEvent,
    Handoff,
    Hit,
    Meta,
    Sources,
    TurnContext,
    UpstreamBroken,
    UpstreamUnavailable,
)
from .prompt import build_messages

logger = logging.getLogger(__name__)

MIN_SOURCE_SCORE = 0.3


def _outcome(decision: Decision | None, sources: list[Hit]) -> str:
    """What the turn did, as the decision framed it (the customer's own memories can still answer
    a turn the knowledge base declined)."""
    if decision is None or decision.outcome == ANSWER:
        return "answered"
    if decision.outcome == CLARIFY:
        return "clarified"
    return "answered" if sources else "no_match"  # sources: the customer's own memories


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_knowledge",
            "description": "用新的关键词检索公司知识库和该客户的记忆。",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "检索用的问题或关键词"}},
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "save_customer_fact",
            "description": "记下顾客明确说出的、关于其本人的稳定事实（如常用收货城市、会员等级、偏好）。",
            "parameters": {
                "type": "object",
                "properties": {"fact": {"type": "string", "description": "一句话描述的事实"}},
                "required": ["fact"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "transfer_to_human",
            "description": "把对话转接给人工客服。",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "转人工的原因"}},
                "required": [],
            },
        },
    },
]


@dataclass
class _ToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rounds: int = 0
    tools: list[str] = field(default_factory=list)

    def add(self, usage: dict[str, Any]) -> None:
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)


async def _read_contents(
    response: httpx.Response, usage: _Usage, calls: dict[int, _ToolCall]
) -> AsyncIterator[tuple[str, bool]]:
    """The model's SSE stream, read as it arrives: per network read, the answer text of the
    chunks it completed (usage and tool-call pieces recorded on the way), and whether `[DONE]`
    was among them. Raises on an error event or a malformed chunk."""
    pending = ""
    async for text in response.aiter_text():
        lines = (pending + text).split("\n")
        pending = lines.pop()  # the line still incomplete ("" after a newline)
        pieces: list[str] = []
        done = False
        try:
            for line in lines:
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                content = _chunk_content(json.loads(data), usage, calls)
                if content:
                    pieces.append(content)
        except Exception:
            if pieces:  # what came before the bad chunk is the partial answer
                yield "".join(pieces), False
            raise
        yield "".join(pieces), done
        if done:
            return
    if pending.startswith("data:") and (data := pending[5:].strip()) != "[DONE]":
        yield _chunk_content(json.loads(data), usage, calls), False


def _chunk_content(chunk: Any, usage: _Usage, calls: dict[int, _ToolCall]) -> str:
    """One chunk of the model's stream: its usage and tool-call pieces recorded, its text returned."""
    if not isinstance(chunk, dict) or "error" in chunk:
        raise ValueError("error event in the model's stream")
    if chunk.get("usage"):
        usage.add(chunk["usage"])
    for choice in (chunk.get("choices") or [])[:1]:
        delta = choice.get("delta") or {}
        for piece in delta.get("tool_calls") or ():
            call = calls.setdefault(piece.get("index") or 0, _ToolCall())
            call.id = piece.get("id") or call.id
            function = piece.get("function") or {}
            call.name = function.get("name") or call.name
            call.arguments += function.get("arguments") or ""
        return str(delta.get("content") or "")
    return ""


class LLMResponder:
    name = "llm"

    def __init__(
        self,
        *,
        client: AsyncOpenAI,
        model: str,
        company: str,
        history_budget: int = 2000,
        max_tool_rounds: int = 3,
        temperature: float = 0.3,
        max_tokens: int = 1024,
    ) -> None:
        self.client = client
        self.model = model
        self.company = company
        self.history_budget = history_budget
        self.max_tool_rounds = max_tool_rounds
        self.temperature = temperature
        self.max_tokens = max_tokens

    async def aclose(self) -> None:
        await self.client.close()

    async def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]:
        messages = build_messages(
            company=self.company,
            hits=turn.hits,
            history=turn.history,
            history_budget=self.history_budget,
            text=turn.text,
            images=turn.images,
            decision=turn.decision,
        )
        decision = turn.decision
        sources = [hit for hit in turn.hits if hit.score >= MIN_SOURCE_SCORE]
        if decision is not None:
            # The knowledge base's part is the decision's: the entry to answer from, or none (a
            # question back, or nothing matched); the customer's own memories are still cited.
            answered = list(decision.entries) if decision.outcome == ANSWER else []
            sources = answered + [hit for hit in sources if hit.scope != PUBLIC]
        if sources:
            yield Sources(hits=sources)
        usage = _Usage()
        produced = False
        for round_no in range(self.max_tool_rounds + 1):
            calls: dict[int, _ToolCall] = {}
            offer_tools = round_no < self.max_tool_rounds
            async for delta in self._one_round(messages, usage, calls, offer_tools, produced):
                produced = True
                yield Delta(text=delta)
            usage.rounds += 1
            if not calls:
                break
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in calls.values()
                    ],
                }
            )
            for call in calls.values():
                usage.tools.append(call.name or "?")
                result, events = await self._run_tool(call, turn)
                for event in events:
                    yield event
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        yield Meta(
            engine=self.name,
            outcome=_outcome(decision, sources),
            usage={
                "model": self.model,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                "rounds": usage.rounds,
                "tools": usage.tools,
            },
        )

    async def _one_round(
        self,
        messages: list[dict[str, Any]],
        usage: _Usage,
        calls: dict[int, _ToolCall],
        offer_tools: bool,
        produced: bool,
    ) -> AsyncIterator[str]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if offer_tools:
            body["tools"] = TOOLS
        try:
            # The SDK sends the request (auth, base URL, timeouts, retries, status errors); the stream
            # is read raw: its typed path spends ~3x the whole relay's time validating the request
            # and building an object per chunk (bench/llm_stream.py, bench/README.md).
            response = await self.client.post(
                "/chat/completions", body=body, cast_to=httpx.Response, stream=True
            )
        except openai.APIStatusError as exc:
            raise self._failure(produced, f"status {exc.status_code}") from None
        except (openai.APIError, httpx.HTTPError, OSError) as exc:
            raise self._failure(produced, type(exc).__name__) from None
        sent = produced
        try:
            # One delta per network read, however many chunks it brought: every event costs the
            # turn its way through the chat service, the SSE framing and the middleware's `send`.
            async for content, done in _read_contents(response, usage, calls):
                if content:
                    sent = True
                    yield content
                if done:
                    break
        except Exception as exc:  # noqa: BLE001 - any failure reading the upstream is the model's failure
            raise self._failure(sent, type(exc).__name__) from None
        finally:
            await response.aclose()

    @staticmethod
    def _failure(produced: bool, what: str) -> Exception:
        # Only the kind of failure is logged: never the request, which carries the API key.
        logger.warning(
            "model request failed (%s) %s the first token", what, "after" if produced else "before"
        )
        return UpstreamBroken(what) if produced else UpstreamUnavailable(what)

    async def _run_tool(self, call: _ToolCall, turn: TurnContext) -> tuple[str, list[EngineEvent]]:
        """Run one tool call; malformed or unknown calls get an error result the model can read."""
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            return json.dumps({"error": "参数不是合法的 JSON 对象"}, ensure_ascii=False), []
        if call.name == "search_knowledge":
            query = str(args.get("query", ""))[:500].strip()
            if not query:
                return json.dumps({"error": "query 不能为空"}, ensure_ascii=False), []
            hits = await turn.search(query)
            found = [
                {"id": h.ref, "type": h.scope, "score": round(h.score, 3), "content": h.content}
                | ({"question": h.question} if h.question else {})
                for h in hits
            ]
            events: list[EngineEvent] = []
            if hits:
                events.append(Sources(hits=[h for h in hits if h.score >= MIN_SOURCE_SCORE]))
            return json.dumps({"results": found}, ensure_ascii=False), events
        if call.name == "save_customer_fact":
            fact = str(args.get("fact", ""))[:1000].strip()
            if not fact:
                return json.dumps({"error": "fact 不能为空"}, ensure_ascii=False), []
            memory_id = await turn.remember(fact)
            return json.dumps({"saved": memory_id is not None}, ensure_ascii=False), []
        if call.name == "transfer_to_human":
            # The customer is told in the stream itself, whatever the model writes next.
            notice: list[EngineEvent] = [Handoff(message=HANDOFF_MESSAGE), Delta(text=HANDOFF_MESSAGE + "\n")]
            return json.dumps({"transferred": True}, ensure_ascii=False), notice
        return json.dumps({"error": f"未知的工具: {call.name[:64]}"}, ensure_ascii=False), []

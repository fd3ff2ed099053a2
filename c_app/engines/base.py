"""The engine interface: a turn's context in, a stream of events out.

An engine yields DeltaEvent pieces of its answer as soon as they exist, and may yield a
SourcesEvent (what the answer drew on), a HandoffEvent (the customer should get a person) and a
MetaEvent (engine name, status such as "fallback", token usage). It never touches the database:
the chat service stores what the engine produced, and hands the engine the few actions it may
take on the customer's behalf as callables in the context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..db.memories import RetrievedMemory
from ..db.models import Message
from ..schemas.events import DeltaEvent, HandoffEvent, MetaEvent, SourcesEvent

EngineEvent = DeltaEvent | SourcesEvent | HandoffEvent | MetaEvent


async def _no_search(query: str) -> list[RetrievedMemory]:
    return []


async def _no_remember(fact: str) -> int | None:
    return None


@dataclass(slots=True)
class TurnContext:
    user_id: str
    session_id: str
    text: str  # the customer's words (text parts joined)
    parts: list[dict[str, Any]] | None
    memories: list[RetrievedMemory]
    history: list[Message] = field(default_factory=list)
    # Image parts resolved to data URLs the model can read (only this user's own uploads).
    images: list[str] = field(default_factory=list)
    search: Callable[[str], Awaitable[list[RetrievedMemory]]] = _no_search
    remember: Callable[[str], Awaitable[int | None]] = _no_remember


class Engine(Protocol):
    name: str

    def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]: ...

"""The engine interface: a turn's context in, a stream of events out.

An engine yields DeltaEvent pieces of its answer as soon as they exist, and may yield a
SourcesEvent (what the answer drew on) and a HandoffEvent (the customer should get a person).
It does not touch the database: the chat service stores what the engine produced.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..db.models import Message
from ..schemas.events import DeltaEvent, HandoffEvent, SourcesEvent
from ..db.memories import RetrievedMemory

EngineEvent = DeltaEvent | SourcesEvent | HandoffEvent


@dataclass(slots=True)
class TurnContext:
    user_id: str
    session_id: str
    text: str  # the customer's words (text parts joined)
    parts: list[dict[str, Any]] | None
    memories: list[RetrievedMemory]
    history: list[Message] = field(default_factory=list)


class Engine(Protocol):
    name: str

    def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]: ...

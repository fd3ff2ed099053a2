"""What a chat turn's stream can carry. One serialiser per wire format renders these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class DeltaEvent(BaseModel):
    type: Literal["delta"] = "delta"
    text: str


class SourcesEvent(BaseModel):
    type: Literal["sources"] = "sources"
    sources: list[dict[str, Any]]


class HandoffEvent(BaseModel):
    type: Literal["handoff"] = "handoff"
    message: str


class SuggestionsEvent(BaseModel):
    type: Literal["suggestions"] = "suggestions"
    questions: list[str]


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    message_id: int | None
    engine: str
    status: str
    usage: dict[str, Any] | None = None


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    message: str


ChatEvent = DeltaEvent | SourcesEvent | HandoffEvent | SuggestionsEvent | DoneEvent | ErrorEvent

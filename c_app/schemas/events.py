"""What a chat turn's stream can carry. One serialiser per wire format renders these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class DeltaEvent(BaseModel):
    type: Literal["delta"] = "delta"
    text: str


class SourcesEvent(BaseModel):
    type: Literal["sources"] = "sources"
    sources: list[dict[str, Any]]


class HandoffEvent(BaseModel):
    type: Literal["handoff"] = "handoff"
    message: str


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    message_id: int | None
    engine: str
    status: str
    usage: dict[str, Any] | None = None


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    message: str


ChatEvent = DeltaEvent | SourcesEvent | HandoffEvent | DoneEvent | ErrorEvent


class EngineResult(BaseModel):
    """What an engine reports about its answer once it is finished (stored with the message)."""

    status: str = "complete"
    usage: dict[str, Any] | None = None
    sources: list[dict[str, Any]] = Field(default_factory=list)

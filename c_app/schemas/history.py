"""Session history, rename and answer feedback: the models of /api/v1/chat/session/... and /message/..."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class RenameRequest(BaseModel):
    # Generous bound here; the service trims and applies the real 1..200 limit with a Chinese message.
    title: str = Field(max_length=2000)


class FeedbackRequest(BaseModel):
    # Required but nullable: an explicit null clears the rating.
    rating: Literal["like", "dislike"] | None
    comment: str | None = Field(default=None, max_length=10_000)


class Feedback(BaseModel):
    rating: Literal["like", "dislike"] | None
    comment: str | None = None
    created_at: str | None = None


class MessageItem(BaseModel):
    id: int
    role: str
    content: str
    parts: list[dict[str, Any]] | None = None
    status: str
    engine: str | None = None
    sources: list[dict[str, Any]] | None = None
    feedback: Feedback | None = None
    created_at: str


class MessagePage(BaseModel):
    session_id: str
    messages: list[MessageItem]
    # More messages lie beyond this page in the direction it was read (older for before/desc).
    has_more: bool

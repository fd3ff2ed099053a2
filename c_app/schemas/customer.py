"""The seed's request and response models (field names are the contract clients speak)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ID_MAX = 128


class ChatMessage(BaseModel):
    """A customer's message: plain text, or a list of typed parts (text and images)."""

    role: Literal["user"] = "user"
    # Parts are checked by the chat service so a malformed list gets the seed's 400 message.
    content: str | list[Any]


class ChatRequest(BaseModel):
    user_id: str = Field(max_length=ID_MAX)
    session_id: str = Field(max_length=ID_MAX)
    message: ChatMessage


class ChatResponse(BaseModel):
    session_id: str
    message_id: int
    content: str
    engine: str
    status: str


class SessionRequest(BaseModel):
    user_id: str = Field(max_length=ID_MAX)
    title: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)


class SessionResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    session_id: str
    user_id: str
    title: str
    created_at: str
    message_count: int
    last_activity: str
    status: str = "active"


class MemoryAddRequest(BaseModel):
    user_id: str = Field(max_length=ID_MAX)
    content: str = Field(max_length=10_000)
    metadata: dict[str, Any] | None = None


class MemoryRetrieveRequest(BaseModel):
    user_id: str = Field(max_length=ID_MAX)
    query: str = Field(max_length=2_000)
    limit: int | None = Field(default=None, ge=1, le=50)


class MemoryItem(BaseModel):
    id: int
    content: str
    type: Literal["private", "chat", "public"]
    relevance_score: float
    created_at: str | None
    title: str | None = None
    category: str | None = None
    question: str | None = None

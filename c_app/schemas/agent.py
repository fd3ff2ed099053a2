"""Request bodies of the agent routes and the customer's live routes (issue 10); docs/agent-api.md
describes the answers."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .customer import ID_MAX, ID_PATTERN


class PresenceRequest(BaseModel):
    status: str = Field(max_length=16)
    max_concurrent: int | None = None


class AgentMessageRequest(BaseModel):
    content: str
    internal: bool = False


class TransferRequest(BaseModel):
    agent_id: str = Field(max_length=ID_MAX, pattern=ID_PATTERN)


class RatingRequest(BaseModel):
    score: int
    comment: str | None = None


class ReadRequest(BaseModel):
    message_id: int = Field(ge=1, le=2**63 - 1)

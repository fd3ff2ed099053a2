"""Session history, rename and answer feedback: the models of /api/v1/chat/session/... and /message/..."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .customer import Text

if TYPE_CHECKING:
    from ..db.models import Message


class RenameRequest(BaseModel):
    # Generous bound here; the service trims and applies the real 1..200 limit with a Chinese message.
    # NUL is refused (422) as on session create: PostgreSQL cannot store it.
    title: Text = Field(max_length=2000)


class FeedbackRequest(BaseModel):
    # Required but nullable: an explicit null clears the rating.
    rating: Literal["like", "dislike"] | None
    comment: Text | None = Field(default=None, max_length=10_000)


class Feedback(BaseModel):
    rating: Literal["like", "dislike"] | None
    comment: str | None = None
    created_at: str | None = None

    @classmethod
    def from_row(cls, row: Message) -> Feedback | None:
        """The message's rating, or None when it has none."""
        if row.feedback is None:
            return None
        return cls(
            rating=row.feedback,  # type: ignore[arg-type]  # the service stores only "like" or "dislike"
            comment=row.feedback_comment,
            created_at=row.feedback_at.isoformat() if row.feedback_at else None,
        )


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
    # What an answer did (answered, clarified, no_match, handoff, smalltalk, blocked); null for a question.
    outcome: str | None = None
    # role=agent: the human agent's display name (issue 10); null otherwise.
    agent_name: str | None = None

    @classmethod
    def from_row(cls, row: Message) -> MessageItem:
        return cls(
            id=row.id,
            role=row.role,
            content=row.content,
            parts=row.parts,
            status=row.status,
            engine=row.engine,
            sources=row.sources,
            feedback=Feedback.from_row(row),
            created_at=row.created_at.isoformat(),
            outcome=row.outcome,
            agent_name=row.agent_name,
        )


class MessagePage(BaseModel):
    session_id: str
    messages: list[MessageItem]
    # More messages lie beyond this page in the direction it was read (older for before/desc).
    has_more: bool


class DeletedSession(BaseModel):
    session_id: str
    deleted_messages: int


class FeedbackResult(BaseModel):
    message_id: int
    feedback: Feedback | None  # None: the rating was cleared

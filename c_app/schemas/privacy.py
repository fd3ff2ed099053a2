"""Personal data and the audit log on the wire: the rows of a customer's export archive
(`customer.json`), what an erasure removed, and audit entries as the admin API lists them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from ..db.models import AuditEntry, ChatSession, Memory, Message, ModerationEvent, Ticket, Upload

EXPORT_FORMAT = "c_app.customer-export"
EXPORT_VERSION = 1
# What the archive says about data kinds the service does not hold yet (none since tickets, issue 10).
NOT_YET_HELD: dict[str, str] = {}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# -- customer.json rows ---------------------------------------------------------------------------


def export_session(row: ChatSession) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "description": row.description,
        "status": row.status,
        "metadata": row.meta or {},
        "message_count": row.message_count,
        "created_at": _iso(row.created_at),
        "last_activity_at": _iso(row.last_activity_at),
    }


def export_message(row: Message) -> dict[str, Any]:
    feedback = None
    if row.feedback is not None:
        feedback = {"rating": row.feedback, "comment": row.feedback_comment, "at": _iso(row.feedback_at)}
    return {
        "id": row.id,
        "session_id": row.session_id,
        "role": row.role,
        "content": row.content,
        "parts": row.parts,
        "status": row.status,
        "engine": row.engine,
        "sources": row.sources,
        "created_at": _iso(row.created_at),
        "feedback": feedback,
    }


def export_private_memory(row: Memory) -> dict[str, Any]:
    return {
        "id": row.id,
        "content": row.content,
        "metadata": row.meta or {},
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def export_chat_memory(row: Memory) -> dict[str, Any]:
    return {
        "id": row.id,
        "question": row.question,
        "content": row.content,
        "metadata": row.meta or {},
        "created_at": _iso(row.created_at),
    }


def export_upload(row: Upload, file: str | None) -> dict[str, Any]:
    """An upload's metadata; `file` is its path inside the archive (None: the file is missing)."""
    return {
        "id": row.id,
        "session_id": row.session_id,
        "original_name": row.original_name,
        "content_type": row.content_type,
        "size": row.size,
        "width": row.width,
        "height": row.height,
        "created_at": _iso(row.created_at),
        "file": file,
    }


def export_moderation_event(row: ModerationEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "session_id": row.session_id,
        "message_id": row.message_id,
        "direction": row.direction,
        "hits": row.hits,
        "words": list(row.words or []),
        "created_at": _iso(row.created_at),
    }


def export_ticket(row: Ticket) -> dict[str, Any]:
    return {
        "id": row.id,
        "session_id": row.session_id,
        "content": row.content,
        "phone": row.phone,
        "email": row.email,
        "status": row.status,
        "created_at": _iso(row.created_at),
        "closed_at": _iso(row.closed_at),
    }


# -- answers --------------------------------------------------------------------------------------


class ErasureResult(BaseModel):
    """How much of one customer's data an erasure removed (all zero: nothing was held)."""

    user_id: str
    sessions: int
    messages: int
    private_memories: int
    chat_memories: int
    uploads: int
    upload_files: (
        int  # files removed from disk (an upload row whose file was already gone counts in uploads only)
    )
    moderation_events: int
    tickets: int  # messages left while no agent was there (留言)
    rate_limit_keys: int  # the customer's rate-limit counters that were cleared
    audit_entries_pseudonymised: int  # audit entries that named the customer and now carry the pseudonym
    stopped_answers: int  # answers being generated for the customer in this process, stopped


class AuditEntryOut(BaseModel):
    id: int
    created_at: str
    actor: str
    actor_role: str
    action: str
    target_type: str
    target_id: str
    customer_id: str | None
    address: str
    request_id: str
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: AuditEntry) -> AuditEntryOut:
        return cls(
            id=row.id,
            created_at=row.created_at.isoformat(),
            actor=row.actor,
            actor_role=row.actor_role,
            action=row.action,
            target_type=row.target_type,
            target_id=row.target_id,
            customer_id=row.customer_id,
            address=row.address,
            request_id=row.request_id,
            detail=dict(row.detail or {}),
        )


class AuditPage(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[AuditEntryOut]

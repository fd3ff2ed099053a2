"""SQLAlchemy 2 models. The schema itself is created by the Alembic revisions in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# BIGINT primary keys autoincrement on PostgreSQL; SQLite only autoincrements INTEGER.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ChatSession(Base):
    __tablename__ = "chat_sessions"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(32), default="active")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_chat_sessions_user_activity", "user_id", "last_activity_at"),
        Index("ix_chat_sessions_last_activity_at", "last_activity_at"),  # retention
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    parts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # complete | partial (stream broke) | interrupted (client left) | fallback (model down, KB answered)
    status: Mapped[str] = mapped_column(String(16), default="complete")
    engine: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What an answer did: answered | clarified | no_match | handoff | smalltalk | blocked (None: a question).
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The knowledge-base entry an answer was built on (its first public source), for the figures.
    entry_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The knowledge-base decision (migration 0010): the turn's best knowledge-base score, the entry
    # ids a clarified answer offered (best first), and the one the customer then picked.
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    choices: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    chosen_entry_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The customer's rating of an answer: "like" | "dislike" | None (not rated, or cleared).
    feedback: Mapped[str | None] = mapped_column(String(16), nullable=True)
    feedback_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    feedback_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # role=agent: the human agent who wrote it (issue 10).
    agent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    agent_name: Mapped[str | None] = mapped_column(String(100), nullable=True)

    __table_args__ = (
        Index("ix_messages_session_id_id", "session_id", "id"),
        Index("ix_messages_role_created_outcome", "role", "created_at", "outcome", "entry_id"),  # figures
        Index("ix_messages_feedback_at", "feedback_at", "feedback"),  # ratings per day
    )


class Memory(Base):
    """One remembered item. scope: public (knowledge base), private (about a user), chat (a past exchange)."""

    __tablename__ = "memories"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(String(128), default="")  # "" for public
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    title: Mapped[str] = mapped_column(String(500), default="")
    category: Mapped[str] = mapped_column(String(100), default="")
    question: Mapped[str] = mapped_column(Text, default="")
    similar_questions: Mapped[list[str]] = mapped_column(JSON, default=list)
    content: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The analysed terms it is ranked on (records, see retrieval/stored.py); NULL until analysed.
    # Private and chat memories: read per request instead of re-analysing the text.
    tokens: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)

    __table_args__ = (
        Index("ix_memories_scope_owner_id", "scope", "owner_id", "id"),
        Index("uq_memories_scope_owner_external", "scope", "owner_id", "external_id", unique=True),
        Index("ix_memories_scope_created_at", "scope", "created_at"),  # retention
    )


class MemoryChange(Base):
    """Append-only log of memory writes; every process follows it to keep its search index current."""

    __tablename__ = "memory_changes"

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    memory_id: Mapped[int] = mapped_column(BigInteger)
    scope: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IndexSnapshot(Base):
    """A search index saved for every replica to start from (services/index_sync.py): the arrays
    (an .npz archive, retrieval/snapshot.py), the change-log sequence number they cover, and the
    lease of the replica writing the next one."""

    __tablename__ = "index_snapshots"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # "public"
    version: Mapped[int] = mapped_column(Integer, default=0)  # snapshot.FORMAT_VERSION
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    entries: Mapped[int] = mapped_column(Integer, default=0)
    checksum: Mapped[str] = mapped_column(String(64), default="")  # SHA-256 of data, hex
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    lease: Mapped[str] = mapped_column(String(100), default="")  # "<expiry> <holder>", "" when free
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    session_id: Mapped[str] = mapped_column(String(128))
    stored_name: Mapped[str] = mapped_column(String(64), unique=True)
    original_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True, default=utcnow)  # retention


class BackgroundJob(Base):
    """Work done in the background, whose status a client polls (a large knowledge-base import).

    The row is the job's record and its input; the job engine (procrastinate on PostgreSQL, an
    in-process runner on SQLite) only decides who runs it and when (c_app/services/jobs.py)."""

    __tablename__ = "background_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued, running, succeeded, failed
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # dropped once done
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AppMeta(Base):
    """Small key/value facts about this database (e.g. that the sample knowledge base was loaded)."""

    __tablename__ = "app_meta"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MemoryVector(Base):
    """A memory's embedding (optional dense retrieval), kept so a restart does not re-embed everything.

    text_hash identifies the text it was computed from and model the embedding model: a vector
    whose entry changed since, or from another model, is recomputed.
    """

    __tablename__ = "memory_vectors"

    memory_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("memories.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    model: Mapped[str] = mapped_column(String(200))
    text_hash: Mapped[str] = mapped_column(String(64))
    dims: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """Who read or changed a customer's data or the knowledge base, when, and from where.

    Append-only: no route changes or removes a row. Never holds the data itself (ids and counts only).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))  # "admin", an agent id, "system"
    actor_role: Mapped[str] = mapped_column(String(32))  # admin | supervisor | agent | system
    action: Mapped[str] = mapped_column(String(64))  # e.g. customer.export, customer.erase, knowledge.update
    target_type: Mapped[str] = mapped_column(String(32))  # customer | knowledge | session | agent | ...
    target_id: Mapped[str] = mapped_column(String(200), default="")
    customer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    address: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # counts and flags, never content

    __table_args__ = (
        Index("ix_audit_log_created_at", "created_at"),
        Index("ix_audit_log_customer_id", "customer_id", "id"),
        Index("ix_audit_log_action", "action", "id"),
    )


class ModerationEvent(Base):
    """A sensitive-word hit (敏感词) on a customer's message (blocked) or on an answer (masked)."""

    __tablename__ = "moderation_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    user_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(String(128))
    message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    direction: Mapped[str] = mapped_column(String(16))  # question | answer
    hits: Mapped[int] = mapped_column(Integer, default=1)
    words: Mapped[list[str]] = mapped_column(JSON, default=list)  # the listed words matched (not the text)

    __table_args__ = (
        Index("ix_moderation_events_created_at", "created_at"),
        Index("ix_moderation_events_user_id", "user_id", "id"),
    )


class Agent(Base):
    """A human agent's presence (issue 10): who is there and how many conversations they may hold."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16), default="agent")  # agent | supervisor
    status: Mapped[str] = mapped_column(String(16), default="offline")  # online | away | offline
    max_concurrent: Mapped[int] = mapped_column(Integer, default=5)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Handoff(Base):
    """One hand-off of a session to a person: queued, assigned (held by agent_id), closed; with its
    timestamps (waiting and handling times) and the customer's rating of it (CSAT).

    open_session is the session id while the hand-off is open and NULL once closed: unique, so a
    session is in the queue or held at most once, whoever hands it off at the same moment."""

    __tablename__ = "handoffs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("chat_sessions.id", ondelete="CASCADE"))
    open_session: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    user_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(16))  # customer | model | dislikes
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | assigned | closed
    agent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    last_question: Mapped[str] = mapped_column(Text, default="")
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rating_comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    rated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_handoffs_status_created_at", "status", "created_at"),
        Index("ix_handoffs_session_id_id", "session_id", "id"),
        Index("ix_handoffs_agent_id_status", "agent_id", "status"),
        Index("ix_handoffs_closed_at", "closed_at"),
    )


class HandoffNote(Base):
    """An agent's internal note on a hand-off: never shown to the customer."""

    __tablename__ = "handoff_notes"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    handoff_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("handoffs.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(128))
    agent_id: Mapped[str] = mapped_column(String(128))
    agent_name: Mapped[str] = mapped_column(String(100))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_handoff_notes_handoff_id", "handoff_id", "id"),)


class LiveEvent(Base):
    """The live events sent to customers and agents, kept a while so a reconnecting stream resumes
    from its Last-Event-ID (the id grows across every replica)."""

    __tablename__ = "live_events"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(200))
    # The session the event is about (customer erasure removes its events), when it is about one.
    session_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_live_events_channel_id", "channel", "id"),
        Index("ix_live_events_created_at", "created_at"),
        Index("ix_live_events_session_id", "session_id"),
    )


class StopRequest(Base):
    """A stop asked for a session's running turn: the flag the turn checks, whichever replica runs it."""

    __tablename__ = "stop_requests"

    session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Ticket(Base):
    """A message left when no agent is there (留言): one per session while open, the customer's
    later messages appended; the contact details found in it (services/ticket_service.py)."""

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[str] = mapped_column(String(128))
    content: Mapped[str] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (
        Index("ix_tickets_status_id", "status", "id"),  # the agents' list, open first
        Index("ix_tickets_user_id", "user_id", "id"),  # export and erasure
        Index("ix_tickets_session_status", "session_id", "status"),  # the session's open ticket
        Index("ix_tickets_updated_at", "updated_at"),  # retention
    )


class CannedReply(Base):
    """An agent's saved reply (快捷回复), inserted with "/" + shortcut; owner_id "" is shared by all."""

    __tablename__ = "canned_replies"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    owner_id: Mapped[str] = mapped_column(String(128), default="")
    shortcut: Mapped[str] = mapped_column(String(32))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("uq_canned_replies_owner_shortcut", "owner_id", "shortcut", unique=True),)

"""Queries of the operator console: figures per UTC day, top questions and entries, gaps, conversations.

Every chart is one aggregate query run by the database (SQLAlchemy Core, the same on SQLite and
PostgreSQL except where noted). Day buckets are UTC dates: SQLite stores the UTC time as text
(`date(created_at)`), PostgreSQL a timestamptz (`date(timezone('UTC', created_at))`, whatever the
session's time zone). Ranges on `messages.created_at` use ix_messages_role_created_at; the feedback
chart uses ix_messages_feedback_at (migration 0007).

The one dialect-specific query unnests `messages.sources` (a JSON list): `json_each` on SQLite,
`jsonb_array_elements` on PostgreSQL (the column is JSON, cast to jsonb).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    and_,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from .memories import PUBLIC
from .models import ChatSession, Memory, Message

USER = "user"
ASSISTANT = "assistant"


def _dialect(db: AsyncSession) -> str:
    return db.get_bind().dialect.name


def day_of(db: AsyncSession, column: Any) -> ColumnElement[Any]:
    """The UTC date of a timestamp column, as the database computes it."""
    if _dialect(db) == "postgresql":
        # A literal (not a bound parameter), so the same expression in SELECT and GROUP BY matches.
        return func.date(func.timezone(literal_column("'UTC'"), column))
    return func.date(column)


def day_key(value: Any) -> str:
    """A day bucket as returned by either database ('YYYY-MM-DD' text or a date) as ISO text."""
    if isinstance(value, datetime | date):
        return value.isoformat()[:10]
    return str(value)[:10]


async def turns_per_day(db: AsyncSession, *, start: datetime) -> dict[str, int]:
    """Assistant messages per UTC day since `start`."""
    day = day_of(db, Message.created_at).label("day")
    query = (
        select(day, func.count())
        .where(Message.role == ASSISTANT, Message.created_at >= start)
        .group_by(day_of(db, Message.created_at))
    )
    rows: list[Any] = list((await db.execute(query)).all())
    return {day_key(d): int(n) for d, n in rows}


async def outcomes_per_day(db: AsyncSession, *, start: datetime) -> dict[tuple[str, str], int]:
    """(day, outcome) -> assistant messages with that outcome since `start`."""
    day = day_of(db, Message.created_at).label("day")
    query = (
        select(day, Message.outcome, func.count())
        .where(Message.role == ASSISTANT, Message.created_at >= start, Message.outcome.is_not(None))
        .group_by(day_of(db, Message.created_at), Message.outcome)
    )
    rows: list[Any] = list((await db.execute(query)).all())
    return {(day_key(d), str(o)): int(n) for d, o, n in rows}


async def feedback_per_day(db: AsyncSession, *, start: datetime) -> dict[tuple[str, str], int]:
    """(day, like|dislike) -> ratings given that UTC day (by feedback_at) since `start`."""
    day = day_of(db, Message.feedback_at).label("day")
    query = (
        select(day, Message.feedback, func.count())
        .where(Message.feedback_at >= start, Message.feedback.is_not(None))
        .group_by(day_of(db, Message.feedback_at), Message.feedback)
    )
    rows: list[Any] = list((await db.execute(query)).all())
    return {(day_key(d), str(f)): int(n) for d, f, n in rows}


async def top_questions(db: AsyncSession, *, start: datetime, limit: int) -> list[tuple[str, int]]:
    """The customers' most frequent questions (content as stored, trimmed) since `start`."""
    question = func.trim(Message.content)
    count = func.count().label("n")
    query = (
        select(question.label("question"), count)
        .where(Message.role == USER, Message.created_at >= start, question != "")
        .group_by(question)
        .order_by(count.desc(), question)
        .limit(limit)
    )
    rows: list[Any] = list((await db.execute(query)).all())
    return [(str(q), int(n)) for q, n in rows]


async def top_entries(db: AsyncSession, *, start: datetime, limit: int) -> list[tuple[int, str, str, int]]:
    """Knowledge-base entries most often used to answer since `start`: (id, question, title, count),
    the question and title as the entry has them now (empty for an entry deleted since).

    An answer records the entry it was built on (its first public source, `messages.entry_id`), so
    this is one GROUP BY over the covering index (role, created_at, outcome, entry_id): no JSON is
    read (parsing every answer's sources took 1.2-3.4 s on a million messages)."""
    count = func.count().label("n")
    top = (
        select(Message.entry_id.label("id"), count)
        .where(Message.role == ASSISTANT, Message.created_at >= start, Message.entry_id.is_not(None))
        .group_by(Message.entry_id)
        .order_by(count.desc(), Message.entry_id)
        .limit(limit)
        .subquery("top")
    )
    query = (
        select(top.c.id, Memory.question, Memory.title, top.c.n)
        .select_from(top)
        .outerjoin(Memory, and_(Memory.id == top.c.id, Memory.scope == PUBLIC))
        .order_by(top.c.n.desc(), top.c.id)
    )
    rows: list[Any] = list((await db.execute(query)).all())
    return [(int(i), str(q or ""), str(t or ""), int(n)) for i, q, t, n in rows]


# -- gaps -----------------------------------------------------------------------------------------


async def gap_rows(
    db: AsyncSession, *, start: datetime, outcomes: Sequence[str], disliked: bool, limit: int
) -> list[dict[str, Any]]:
    """Answers since `start` whose outcome is one of `outcomes` (or that were disliked, when
    `disliked`), newest first, at most `limit`, each with the customer's question: the message
    right before the answer in its session (the previous id), when that message is the user's."""
    answer = aliased(Message, name="a")
    question = aliased(Message, name="q")
    kinds: list[ColumnElement[bool]] = []
    if outcomes:
        kinds.append(answer.outcome.in_(list(outcomes)))
    if disliked:
        kinds.append(answer.feedback == "dislike")
    if not kinds:
        return []
    previous = (
        select(func.max(Message.id))
        .where(Message.session_id == answer.session_id, Message.id < answer.id)
        .scalar_subquery()
    )
    # First the answers (a range of ix_messages_role_created_outcome) with the id of the message
    # before each (one probe of ix_messages_session_id_id), then that message by primary key.
    answers = (
        select(
            answer.id,
            answer.outcome,
            answer.feedback,
            answer.created_at,
            answer.feedback_at,
            answer.chosen_entry_id,
            previous.label("previous_id"),
        )
        .where(answer.role == ASSISTANT, answer.created_at >= start, or_(*kinds))
        .order_by(answer.created_at.desc(), answer.id.desc())
        .limit(limit)
        .subquery("answers")
    )
    query = (
        select(
            answers.c.id,
            answers.c.outcome,
            answers.c.feedback,
            answers.c.created_at,
            answers.c.feedback_at,
            answers.c.chosen_entry_id,
            question.content,
        )
        .join(question, question.id == answers.c.previous_id)
        .where(question.role == USER)
        .order_by(answers.c.created_at.desc(), answers.c.id.desc())
    )
    return [dict(row._mapping) for row in (await db.execute(query)).all()]


async def knowledge_questions(db: AsyncSession) -> list[tuple[str, list[str]]]:
    """Every knowledge-base entry's question and similar questions."""
    query = select(Memory.question, Memory.similar_questions).where(
        Memory.scope == PUBLIC, Memory.owner_id == ""
    )
    return [(str(q or ""), list(s or [])) for q, s in (await db.execute(query)).all()]


# -- conversations --------------------------------------------------------------------------------


def _has_message(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(Message.session_id == ChatSession.id, *conditions)


async def conversations(
    db: AsyncSession,
    *,
    offset: int,
    limit: int,
    user_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    outcome: str | None = None,
    feedback: str | None = None,
    text: str | None = None,
) -> tuple[list[ChatSession], int]:
    """One page of sessions, newest activity first, and how many match in all.

    since/until bound the session's last activity; outcome, feedback and text keep the sessions
    having at least one message with that outcome, that rating, or containing that text
    (case-insensitive, wildcards escaped)."""
    conditions: list[ColumnElement[bool]] = []
    if user_id is not None:
        conditions.append(ChatSession.user_id == user_id)
    if since is not None:
        conditions.append(ChatSession.last_activity_at >= since)
    if until is not None:
        conditions.append(ChatSession.last_activity_at <= until)
    if outcome is not None:
        conditions.append(_has_message(Message.outcome == outcome))
    if feedback is not None:
        conditions.append(_has_message(Message.feedback == feedback))
    if text:
        conditions.append(_has_message(func.lower(Message.content).contains(text.lower(), autoescape=True)))
    total = (await db.execute(select(func.count(ChatSession.id)).where(*conditions))).scalar_one()
    query = (
        select(ChatSession)
        .where(*conditions)
        .order_by(ChatSession.last_activity_at.desc(), ChatSession.id)
        .offset(offset)
        .limit(limit)
    )
    return list((await db.execute(query)).scalars()), int(total)


async def session_figures(db: AsyncSession, session_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per session: answers per outcome, and likes and dislikes ("like"/"dislike" keys), in one query."""
    if not session_ids:
        return {}
    query = (
        select(Message.session_id, Message.outcome, Message.feedback, func.count())
        .where(
            Message.session_id.in_(list(session_ids)),
            or_(Message.outcome.is_not(None), Message.feedback.is_not(None)),
        )
        .group_by(Message.session_id, Message.outcome, Message.feedback)
    )
    out: dict[str, dict[str, int]] = {}
    for session_id, outcome, rating, n in (await db.execute(query)).all():
        figures = out.setdefault(session_id, {})
        if outcome is not None:
            figures[outcome] = figures.get(outcome, 0) + int(n)
        if rating is not None:
            figures[rating] = figures.get(rating, 0) + int(n)
    return out


async def session_messages(db: AsyncSession, session_id: str) -> list[Message]:
    query = select(Message).where(Message.session_id == session_id).order_by(Message.id)
    return list((await db.execute(query)).scalars())

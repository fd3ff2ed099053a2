"""The operator console: figures per day, the knowledge base's gaps, and conversations to read.

    console = ConsoleService(db, knowledge)
    await console.turns(days=30)          # TurnStats: one point per UTC day, oldest first
    await console.gaps(kind="all", days=30, page=1, page_size=20)

Each chart is one aggregate query in the database (db/console.py); the days it has no rows for are
filled with 0 here, so every series has exactly `days` points.

Gaps: the customers' questions the bot could not answer well (its answer was no_match, clarified or
handoff, or the customer disliked it). They are grouped by `retrieval.text.normalize(question)`,
which the database cannot compute (OpenCC conversion, variant folding): the database returns the
newest `GAP_SCAN_LIMIT` such answers with their questions in one bounded query, and the grouping,
and the check that drops questions the knowledge base now covers, happen here (in a worker thread).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread

from ..db import console as repo
from ..db import sessions as sessions_repo
from ..db.engine import Database
from ..db.models import ChatSession, Memory
from ..errors import NotFound
from ..retrieval import LexicalIndex
from ..retrieval.text import normalize
from ..schemas.console import (
    OUTCOME_NAMES,
    ConversationDetail,
    ConversationPage,
    ConversationSummary,
    FeedbackStats,
    Gap,
    GapKinds,
    GapPage,
    OutcomeCounts,
    OutcomeSeries,
    OutcomeStats,
    SuggestedEntry,
    TopEntries,
    TopEntry,
    TopQuestion,
    TopQuestions,
    TurnStats,
)
from ..schemas.history import MessageItem
from ..schemas.knowledge import KnowledgeEntryIn, KnowledgeEntryPatch
from .knowledge_service import KnowledgeService

logger = logging.getLogger(__name__)

GAP_SCAN_LIMIT = 20_000
GAP_EXAMPLES = 3  # other wordings shown with a gap
# Two gap questions are one need when each matches the other at least this well (the index's
# calibrated score: share of the question's information the other one matches).
PARAPHRASE_SCORE = 0.6  # newest problem answers read per gaps request (the grouping is in Python)
SUGGESTIONS = 3
SESSION_NOT_FOUND = "会话不存在"
_GAP_OUTCOMES = ("no_match", "clarified", "handoff")


def day_range(days: int, *, now: datetime | None = None) -> tuple[datetime, list[str]]:
    """The start (00:00 UTC of the oldest day) and the `days` UTC dates ending today, oldest first."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    return start, [(first + timedelta(days=i)).isoformat() for i in range(days)]


@dataclass(slots=True)
class _GapGroup:
    question: str
    last_at: datetime
    first_at: datetime | None = None
    count: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    wordings: list[str] = field(default_factory=list)  # other wordings, newest first
    chosen: dict[int, int] = field(default_factory=dict)  # entry picked after a clarify -> times

    def absorb(self, other: _GapGroup) -> None:
        self.count += other.count
        self.last_at = max(self.last_at, other.last_at)
        if other.first_at is not None:
            self.first_at = other.first_at if self.first_at is None else min(self.first_at, other.first_at)
        for name, n in other.kinds.items():
            self.kinds[name] = self.kinds.get(name, 0) + n
        for wording in (other.question, *other.wordings):
            if wording != self.question and wording not in self.wordings:
                self.wordings.append(wording)
        for entry, n in other.chosen.items():
            self.chosen[entry] = self.chosen.get(entry, 0) + n

    @property
    def chosen_entry_id(self) -> int | None:
        return max(self.chosen, key=lambda e: (self.chosen[e], -e)) if self.chosen else None


def _matches(query: str, question: str) -> bool:
    """`query` matches `question` at PARAPHRASE_SCORE or more (a one-question index: its scores are
    calibrated on the general-Chinese background, see retrieval.index)."""
    index = LexicalIndex()
    index.upsert(0, [question])
    found = index.search(query, 1)
    return bool(found) and found[0][1] >= PARAPHRASE_SCORE


def _merge_paraphrases(groups: list[_GapGroup]) -> list[_GapGroup]:
    """Groups whose questions say the same thing in other words joined (the bigger keeps its
    wording): each question is matched against the questions kept so far, in a lexical index of
    their own, and joins the one it matches at PARAPHRASE_SCORE or more, both ways."""
    index = LexicalIndex()
    kept: list[_GapGroup] = []
    for group in sorted(groups, key=lambda g: (-g.count, -g.last_at.timestamp())):
        target = next(
            (
                kept[doc]
                for doc, score in index.search(group.question, 3)
                if score >= PARAPHRASE_SCORE and _matches(kept[doc].question, group.question)
            ),
            None,
        )
        if target is None:
            index.upsert(len(kept), [group.question])
            kept.append(group)
        else:
            target.absorb(group)
    return kept


def _group_gaps(
    rows: list[dict[str, Any]], covered: set[str], kind: str, sort: str = "recent"
) -> list[_GapGroup]:
    """Rows (newest first) grouped by normalised question and then by paraphrase, without those
    the knowledge base covers; newest first (sort="recent") or most frequent first ("count")."""
    groups: dict[str, _GapGroup] = {}
    for row in rows:
        question = (row["content"] or "").strip()
        key = normalize(question)
        if not key or key in covered:
            continue
        kinds = []
        if row["outcome"] in _GAP_OUTCOMES and kind in ("all", row["outcome"]):
            kinds.append(row["outcome"])
        if row["feedback"] == "dislike" and kind in ("all", "disliked"):
            kinds.append("disliked")
        if not kinds:
            continue
        at = row["created_at"]
        if "disliked" in kinds and row["feedback_at"] is not None and row["feedback_at"] > at:
            at = row["feedback_at"]
        group = groups.get(key)
        if group is None:
            group = groups[key] = _GapGroup(question=question, last_at=at)  # newest wording first
        group.count += 1
        group.last_at = max(group.last_at, at)
        group.first_at = (
            row["created_at"] if group.first_at is None else min(group.first_at, row["created_at"])
        )
        for name in kinds:
            group.kinds[name] = group.kinds.get(name, 0) + 1
        if row.get("chosen_entry_id") is not None:
            entry = int(row["chosen_entry_id"])
            group.chosen[entry] = group.chosen.get(entry, 0) + 1
    merged = _merge_paraphrases(list(groups.values()))
    if sort == "count":
        return sorted(merged, key=lambda g: (g.count, g.last_at), reverse=True)
    return sorted(merged, key=lambda g: g.last_at, reverse=True)


def _covered(entries: list[tuple[str, list[str]]]) -> set[str]:
    out: set[str] = set()
    for question, similar in entries:
        for text in (question, *similar):
            if key := normalize(text):
                out.add(key)
    return out


def summary(row: ChatSession, figures: dict[str, int]) -> ConversationSummary:
    return ConversationSummary(
        session_id=row.id,
        user_id=row.user_id,
        title=row.title,
        message_count=row.message_count,
        created_at=row.created_at.isoformat(),
        last_activity=row.last_activity_at.isoformat(),
        status=row.status,
        outcomes=OutcomeCounts(**{name: figures.get(name, 0) for name in OUTCOME_NAMES}),
        likes=figures.get("like", 0),
        dislikes=figures.get("dislike", 0),
    )


class ConsoleService:
    def __init__(self, db: Database, knowledge: KnowledgeService) -> None:
        self.db = db
        self.knowledge = knowledge

    # -- charts ---------------------------------------------------------------------------------

    async def turns(self, *, days: int) -> TurnStats:
        start, dates = day_range(days)
        async with self.db.read() as db:
            counts = await repo.turns_per_day(db, start=start)
        return TurnStats(days=dates, counts=[counts.get(d, 0) for d in dates])

    async def outcomes(self, *, days: int) -> OutcomeStats:
        start, dates = day_range(days)
        async with self.db.read() as db:
            counts = await repo.outcomes_per_day(db, start=start)
        series = {name: [counts.get((d, name), 0) for d in dates] for name in OUTCOME_NAMES}
        return OutcomeStats(days=dates, series=OutcomeSeries(**series))

    async def feedback(self, *, days: int) -> FeedbackStats:
        start, dates = day_range(days)
        async with self.db.read() as db:
            counts = await repo.feedback_per_day(db, start=start)
        return FeedbackStats(
            days=dates,
            likes=[counts.get((d, "like"), 0) for d in dates],
            dislikes=[counts.get((d, "dislike"), 0) for d in dates],
        )

    async def top_questions(self, *, days: int, limit: int) -> TopQuestions:
        start, _ = day_range(days)
        async with self.db.read() as db:
            rows = await repo.top_questions(db, start=start, limit=limit)
        return TopQuestions(items=[TopQuestion(question=q, count=n) for q, n in rows])

    async def top_entries(self, *, days: int, limit: int) -> TopEntries:
        start, _ = day_range(days)
        async with self.db.read() as db:
            rows = await repo.top_entries(db, start=start, limit=limit)
        return TopEntries(items=[TopEntry(id=i, question=q, title=t, count=n) for i, q, t, n in rows])

    # -- gaps -----------------------------------------------------------------------------------

    async def gaps(self, *, kind: str, days: int, page: int, page_size: int, sort: str = "recent") -> GapPage:
        start, _ = day_range(days)
        outcomes: tuple[str, ...] = _GAP_OUTCOMES if kind == "all" else () if kind == "disliked" else (kind,)
        async with self.db.read() as db:
            rows = await repo.gap_rows(
                db, start=start, outcomes=outcomes, disliked=kind in ("all", "disliked"), limit=GAP_SCAN_LIMIT
            )
            entries = await repo.knowledge_questions(db)
        if len(rows) >= GAP_SCAN_LIMIT:
            logger.info("gaps: only the newest %d problem answers were read", GAP_SCAN_LIMIT)

        def group() -> list[_GapGroup]:
            return _group_gaps(rows, _covered(entries), kind, sort)

        groups = await anyio.to_thread.run_sync(group)
        chosen = groups[(page - 1) * page_size : page * page_size]
        items = []
        for g in chosen:
            hits = await self.knowledge.search(g.question, limit=SUGGESTIONS)
            items.append(
                Gap(
                    question=g.question,
                    count=g.count,
                    kinds=GapKinds(**g.kinds),
                    last_at=g.last_at.isoformat(),
                    first_at=(g.first_at or g.last_at).isoformat(),
                    examples=g.wordings[:GAP_EXAMPLES],
                    chosen_entry_id=g.chosen_entry_id,
                    suggested_entries=[
                        SuggestedEntry(id=h.id, question=h.question or h.title, score=round(h.score, 4))
                        for h in hits
                    ],
                )
            )
        return GapPage(total=len(groups), page=page, page_size=page_size, items=items)

    async def resolve_gap_with_new_entry(
        self, *, question: str, answer: str, title: str = "", category: str = ""
    ) -> Memory:
        """Create an entry for the gap's question (through KnowledgeService.create: every
        replica's index follows, and the next customer asking it is answered from it)."""
        return await self.knowledge.create(
            KnowledgeEntryIn(question=question, answer=answer, title=title, category=category)
        )

    async def resolve_gap(self, *, question: str, entry_id: int) -> tuple[Memory, bool]:
        """Add the question to the entry's similar questions (through KnowledgeService.update, so
        every replica's index follows). Returns the entry and whether it changed (not when the
        entry already had the question, after normalisation)."""
        entry = await self.knowledge.get(entry_id)  # NotFound for a missing entry
        similar = list(entry.similar_questions or [])
        key = normalize(question)
        if key in {normalize(text) for text in (entry.question, *similar)}:
            return entry, False
        patch = KnowledgeEntryPatch(similar_questions=[*similar, question])
        return await self.knowledge.update(entry_id, patch), True

    # -- conversations --------------------------------------------------------------------------

    async def conversations(
        self,
        *,
        page: int,
        page_size: int,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        feedback: str | None = None,
        text: str | None = None,
    ) -> ConversationPage:
        async with self.db.read() as db:
            rows, total = await repo.conversations(
                db,
                offset=(page - 1) * page_size,
                limit=page_size,
                user_id=user_id,
                since=since,
                until=until,
                outcome=outcome,
                feedback=feedback,
                text=text or None,
            )
            figures = await repo.session_figures(db, [row.id for row in rows])
        return ConversationPage(
            total=total,
            page=page,
            page_size=page_size,
            items=[summary(row, figures.get(row.id, {})) for row in rows],
        )

    async def conversation(self, session_id: str) -> ConversationDetail:
        """One session with all its messages, oldest first (read-only)."""
        async with self.db.read() as db:
            row = await sessions_repo.get(db, session_id, owner_id=None)
            if row is None:
                raise NotFound(SESSION_NOT_FOUND)
            figures = await repo.session_figures(db, [row.id])
            messages = await repo.session_messages(db, session_id)
        return ConversationDetail(
            session=summary(row, figures.get(row.id, {})),
            messages=[MessageItem.from_row(m) for m in messages],
        )

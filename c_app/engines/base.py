"""The engine contract: plain inputs in, a stream of plain events out.

Everything an engine sees or says is defined here, free of storage and of any wire format: the
chat service turns stored rows into `Hit` and `HistoryItem`, hands the engine a `TurnContext`,
and turns the engine's `Delta`, `Sources`, `Handoff` and `Meta` into the events a client receives.
An engine never touches the database; the few actions it may take for the customer (search
again, remember a fact) arrive as callables in the context. Engines import this module and
nothing else of the package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

# Where a retrieved memory comes from.
PUBLIC = "public"  # the company's knowledge base
PRIVATE = "private"  # what the customer (or an operator) saved about the customer
CHAT = "chat"  # the customer's past exchanges
Scope = Literal["public", "private", "chat"]

# What an answer did for the customer (stored with it; the operator's figures count them):
# answered (an answer from the knowledge, the customer's memories or the model), clarified (close
# questions offered instead of a guess), no_match (nothing close), handoff (a person was asked
# for), smalltalk (greeting, thanks, goodbye).
OUTCOMES = ("answered", "clarified", "no_match", "handoff", "smalltalk")

HANDOFF_MESSAGE = (
    "好的，正在为您转接人工客服，请稍候。人工客服的服务时间为每天 9:00-21:00；"
    "非服务时间您可以先留言，客服上班后会第一时间联系您。"
)


class UpstreamUnavailable(Exception):
    """The model failed before producing any answer text (a fallback engine may answer instead)."""


class UpstreamBroken(Exception):
    """The model's stream broke after part of the answer was sent."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved memory with its score in [0, 1]."""

    id: int
    scope: str
    score: float
    content: str  # a knowledge-base entry's answer, a private fact, or a past exchange
    question: str = ""
    title: str = ""
    category: str = ""
    grounded: bool = True  # false for a past answer that came from nowhere: it is not repeated
    created_at: datetime | None = None
    similar: tuple[str, ...] = ()  # a knowledge-base entry's similar questions

    @property
    def ref(self) -> str:
        """How the model's prompt names this memory ("kb-12", "private-3")."""
        return f"{'kb' if self.scope == PUBLIC else self.scope}-{self.id}"


@dataclass(frozen=True, slots=True)
class HistoryItem:
    role: str  # "user" or "assistant"
    content: str


@dataclass(slots=True)
class Delta:
    """A piece of the answer's text."""

    text: str


@dataclass(slots=True)
class Sources:
    """What the answer draws on."""

    hits: list[Hit]


@dataclass(slots=True)
class Handoff:
    """The customer should get a person; `message` is what they are told."""

    message: str


@dataclass(slots=True)
class Meta:
    """How the answer was produced (never shown to the customer as text)."""

    engine: str | None = None
    status: str | None = None  # "fallback" when the knowledge base answered for a failed model
    usage: dict[str, Any] | None = None
    outcome: str | None = None  # one of OUTCOMES: what the turn did for the customer


EngineEvent = Delta | Sources | Handoff | Meta


async def _no_search(query: str) -> list[Hit]:
    return []


async def _no_remember(fact: str) -> int | None:
    return None


# What the knowledge-base decision (services/answer_decision.py) made of a turn's hits.
ANSWER, CLARIFY, DECLINE = "answer", "clarify", "none"


@dataclass(frozen=True, slots=True)
class Decision:
    """answer: `entries` is the one entry to answer from; clarify: the 1-3 entries to offer
    (best first); none: the knowledge base has nothing for it (say so, offer a person)."""

    outcome: str  # ANSWER | CLARIFY | DECLINE
    entries: tuple[Hit, ...] = ()
    confidence: float = 0.0  # the model's P(the top entry is right)
    picked: bool = False  # the customer chose this entry among the previous answer's choices


@dataclass(slots=True)
class TurnContext:
    user_id: str
    session_id: str
    text: str  # the customer's words (text parts joined)
    hits: list[Hit]  # what retrieval found for `text`, best first
    history: list[HistoryItem] = field(default_factory=list)  # oldest first, without this turn's message
    # Image parts resolved to data URLs the model can read (only this user's own uploads).
    images: list[str] = field(default_factory=list)
    search: Callable[[str], Awaitable[list[Hit]]] = _no_search
    remember: Callable[[str], Awaitable[int | None]] = _no_remember
    # The knowledge-base decision on `hits` (None: the engine decides from the scores alone).
    decision: Decision | None = None


class Engine(Protocol):
    name: str

    def stream(self, turn: TurnContext) -> AsyncIterator[EngineEvent]: ...

    async def aclose(self) -> None: ...


def close_questions(
    hits: Sequence[Hit],
    *,
    floor: float,
    skip_ids: Collection[int] = (),
    skip: Collection[str] = (),
    titles: bool = False,
    limit: int = 3,
) -> list[str]:
    """Up to `limit` distinct knowledge-base questions scoring at least `floor`, best first
    (`titles`: an entry without a question, such as a policy-document chunk, offers its title).
    The no-match reply lists them; the chat service offers them as follow-up suggestions."""
    questions: list[str] = []
    for hit in hits:
        question = hit.question or (hit.title if titles else "")
        if (
            hit.scope != PUBLIC
            or hit.score < floor
            or hit.id in skip_ids
            or not question
            or question in skip
            or question in questions
        ):
            continue
        questions.append(question)
        if len(questions) == limit:
            break
    return questions

"""The operator console's models: /api/v1/admin/stats/..., /gaps, /conversations.

Every series has one point per UTC day, oldest first, `days` giving the dates ("YYYY-MM-DD")."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .customer import Text
from .history import MessageItem
from .knowledge import ANSWER_MAX, CATEGORY_MAX, QUESTION_MAX, TITLE_MAX

Outcome = Literal["answered", "clarified", "no_match", "handoff", "smalltalk", "blocked"]
OUTCOME_NAMES: tuple[str, ...] = ("answered", "clarified", "no_match", "handoff", "smalltalk", "blocked")
GapKind = Literal["all", "no_match", "clarified", "disliked", "handoff"]
GapSort = Literal["recent", "count"]  # newest first, or most frequent first
GAP_KINDS: tuple[str, ...] = ("no_match", "clarified", "disliked", "handoff")
Rating = Literal["like", "dislike"]


class TurnStats(BaseModel):
    days: list[str]
    counts: list[int]  # assistant messages per day


class OutcomeSeries(BaseModel):
    answered: list[int]
    clarified: list[int]
    no_match: list[int]
    handoff: list[int]
    smalltalk: list[int]
    blocked: list[int]


class OutcomeStats(BaseModel):
    days: list[str]
    series: OutcomeSeries


class FeedbackStats(BaseModel):
    days: list[str]
    likes: list[int]  # by the day the rating was given
    dislikes: list[int]


class TopQuestion(BaseModel):
    question: str
    count: int


class TopQuestions(BaseModel):
    items: list[TopQuestion]


class TopEntry(BaseModel):
    id: int
    question: str
    title: str
    count: int


class TopEntries(BaseModel):
    items: list[TopEntry]


class GapKinds(BaseModel):
    no_match: int = 0
    clarified: int = 0
    disliked: int = 0
    handoff: int = 0


class SuggestedEntry(BaseModel):
    id: int
    question: str
    score: float


class Gap(BaseModel):
    question: str  # the newest wording of the question
    count: int  # answers in the group
    kinds: GapKinds
    last_at: str  # ISO time of the newest answer (or dislike) in the group
    suggested_entries: list[SuggestedEntry]
    first_at: str = ""  # ISO time of the oldest answer in the group
    examples: list[str] = []  # up to GAP_EXAMPLES other wordings grouped with it (paraphrases)
    # The entry customers picked most often when this was clarified (pre-selects the resolve target).
    chosen_entry_id: int | None = None


class GapPage(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[Gap]


class ResolveGapRequest(BaseModel):
    """Either `entry_id` (add the question as that entry's similar question) or `answer` (create a
    new entry with the question and this answer; `title` and `category` optional)."""

    model_config = ConfigDict(str_strip_whitespace=True)

    question: Text = Field(min_length=1, max_length=QUESTION_MAX)
    entry_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    answer: Text | None = Field(default=None, min_length=1, max_length=ANSWER_MAX)
    title: Text = Field(default="", max_length=TITLE_MAX)
    category: Text = Field(default="", max_length=CATEGORY_MAX)

    @model_validator(mode="after")
    def _one_target(self) -> ResolveGapRequest:
        if (self.entry_id is None) == (self.answer is None):
            raise ValueError("entry_id 与 answer 需且只需提供一个")
        return self


class OutcomeCounts(BaseModel):
    answered: int = 0
    clarified: int = 0
    no_match: int = 0
    handoff: int = 0
    smalltalk: int = 0
    blocked: int = 0


class ConversationSummary(BaseModel):
    session_id: str
    user_id: str
    title: str
    message_count: int
    created_at: str
    last_activity: str
    status: str
    outcomes: OutcomeCounts
    likes: int
    dislikes: int


class ConversationPage(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[ConversationSummary]


class ConversationDetail(BaseModel):
    session: ConversationSummary
    messages: list[MessageItem]

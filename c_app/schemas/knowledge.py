"""Knowledge-base entries as operators write them (admin API bodies and import rows) and as the admin
API answers with them; private memories as they are edited and shown."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from .customer import BoundedMetadata, Text, bounded_json

if TYPE_CHECKING:
    from ..db.models import Memory

QUESTION_MAX = 500
ANSWER_MAX = 20_000
SIMILAR_MAX_ITEMS = 50
CATEGORY_MAX = 100
EXTERNAL_ID_MAX = 200
TITLE_MAX = 500

# Text fields refuse NUL and metadata is bounded (5 levels, 50 keys, no NUL) exactly as on the create
# routes of the customer API: an update or an import row is held to the same rules as a create.
SimilarQuestion = Annotated[Text, Field(max_length=QUESTION_MAX)]
EntryMetadata = Annotated[dict[str, Any], AfterValidator(bounded_json)]


class KnowledgeEntryIn(BaseModel):
    """One entry: a question (or at least a title) and its answer. Also the shape of an import row."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    external_id: Text | None = Field(default=None, max_length=EXTERNAL_ID_MAX)
    title: Text = Field(default="", max_length=TITLE_MAX)
    category: Text = Field(default="", max_length=CATEGORY_MAX)
    question: Text = Field(default="", max_length=QUESTION_MAX)
    similar_questions: list[SimilarQuestion] = Field(default_factory=list, max_length=SIMILAR_MAX_ITEMS)
    answer: Text = Field(max_length=ANSWER_MAX)
    metadata: EntryMetadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _required(self) -> KnowledgeEntryIn:
        if not self.answer:
            raise ValueError("答案不能为空")
        if not self.question and not self.title:
            raise ValueError("问题和标题不能都为空")
        self.external_id = self.external_id or None
        self.similar_questions = [q for q in self.similar_questions if q]
        return self


class KnowledgeEntryPatch(BaseModel):
    """A partial update: only the fields sent change (the result must still be a valid entry)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: Text | None = Field(default=None, max_length=EXTERNAL_ID_MAX)
    title: Text | None = Field(default=None, max_length=TITLE_MAX)
    category: Text | None = Field(default=None, max_length=CATEGORY_MAX)
    question: Text | None = Field(default=None, max_length=QUESTION_MAX)
    similar_questions: list[SimilarQuestion] | None = Field(default=None, max_length=SIMILAR_MAX_ITEMS)
    answer: Text | None = Field(default=None, max_length=ANSWER_MAX)
    metadata: BoundedMetadata = None


class HitTestRequest(BaseModel):
    query: Text = Field(min_length=1, max_length=2000)
    limit: int = Field(default=10, ge=1, le=100)


class PrivateMemoryUpdate(BaseModel):
    """The fields of `MemoryAddRequest` a memory's owner may change, with the same validators."""

    content: Text | None = Field(default=None, min_length=1, max_length=10_000)
    metadata: BoundedMetadata = None


# -- answers ------------------------------------------------------------------------------------


class KnowledgeEntryOut(BaseModel):
    """A stored entry: its id, the fields of an import row, and when it was written."""

    id: int
    external_id: str | None
    title: str
    category: str
    question: str
    similar_questions: list[str]
    answer: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: Memory) -> KnowledgeEntryOut:
        return cls(
            id=row.id,
            external_id=row.external_id,
            title=row.title,
            category=row.category,
            question=row.question,
            similar_questions=list(row.similar_questions or []),
            answer=row.content,
            metadata=dict(row.meta or {}),
            created_at=row.created_at.isoformat(),
            updated_at=row.updated_at.isoformat(),
        )


class KnowledgePage(BaseModel):
    total: int
    page: int
    page_size: int
    items: list[KnowledgeEntryOut]


class DeletedEntry(BaseModel):
    id: int


class ImportRowError(BaseModel):
    line: int
    error: str


class GoldenFailure(BaseModel):
    question: str
    expected: str | None  # the external_id it should reach (None: it must not be answered)
    outcome: str  # wrong | clarified | missed
    got: list[str | None]  # the external_ids answered or offered


class GateReportOut(BaseModel):
    """The golden-question gate: how many were answered right, wrong, clarified or missed."""

    total: int
    right: int
    wrong: int
    clarified: int
    missed: int
    right_rate: float
    min_right: float
    passed: bool
    failures: list[GoldenFailure]


class GoldenQuestionIn(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    question: Text = Field(min_length=1, max_length=QUESTION_MAX)
    external_id: Text | None = Field(default=None, max_length=EXTERNAL_ID_MAX)


class GoldenRequest(BaseModel):
    # Each is a search: an API call stays short; a longer file goes through `c-app eval` (up to 5,000).
    questions: list[GoldenQuestionIn] = Field(min_length=1, max_length=200)
    min_right: float = Field(default=0.8, ge=0, le=1)


class ImportReportOut(BaseModel):
    created: int
    updated: int
    failed: int
    deleted: int  # chunks of a re-imported Markdown document that it no longer has
    errors: list[ImportRowError]
    seconds: float
    entries_per_second: float
    gate: GateReportOut | None = None  # with a golden file: the gate the import passed

    @model_serializer(mode="wrap")
    def _without_gate(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("gate") is None:
            data.pop("gate", None)  # an ungated import's report is as it was
        return data


class QueryTerm(BaseModel):
    term: str
    kind: str
    count: int
    weight: float
    in_index: bool | None


class HitTestHit(BaseModel):
    id: int
    external_id: str | None
    question: str
    title: str
    category: str
    score: float
    above_threshold: bool


class HitTestResult(BaseModel):
    """How the query is read (normalised form, weighted terms, tokens), what it finds, and whether
    the knowledge base would answer it directly (`answered`, with `answer_id`)."""

    query: str
    original: str
    normalized: str
    terms: list[QueryTerm]
    words: list[str]
    chars: list[str]
    bigrams: list[str]
    threshold: float
    answered: bool
    answer_id: int | None
    hits: list[HitTestHit]
    decision: str = ""  # answer | clarify | none: what a chat turn would do (issue 11)
    confidence: float = 0.0  # the decision model's P(the top entry is right)
    choice_ids: list[int] = []  # the entries a clarify would offer, in order


class PrivateMemoryOut(BaseModel):
    memory_id: int
    user_id: str
    content: str
    metadata: dict[str, Any]
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: Memory) -> PrivateMemoryOut:
        return cls(
            memory_id=row.id,
            user_id=row.owner_id,
            content=row.content,
            metadata=row.meta,
            created_at=row.created_at.isoformat(),
            updated_at=row.updated_at.isoformat(),
        )


class PrivateMemoryPage(BaseModel):
    user_id: str
    total: int
    limit: int
    offset: int
    memories: list[PrivateMemoryOut]


class DeletedMemory(BaseModel):
    memory_id: int
    user_id: str


def describe_errors(exc: ValidationError) -> str:
    """A short Chinese description of why an import row is not a valid entry."""
    messages: list[str] = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        field = loc[0] if loc else ""
        kind = err.get("type", "")
        limit = (err.get("ctx") or {}).get("max_length")
        if kind == "missing":
            text = "缺少答案 answer" if field == "answer" else f"缺少字段 {field}"
        elif kind == "string_too_long":
            text = f"字段 {'.'.join(loc)} 过长（最多 {limit} 个字符）"
        elif kind == "too_long":
            text = f"字段 {field} 条目过多（最多 {limit} 条）"
        elif kind.endswith(("_type", "_parsing")):
            text = f"字段 {'.'.join(loc)} 类型错误"
        elif kind == "value_error":
            text = str(err.get("msg", "")).removeprefix("Value error, ")
            if loc:  # a field's own rule (NUL, metadata bounds): say which field
                text = f"字段 {'.'.join(loc)} {text}"
        else:
            text = f"字段 {'.'.join(loc) or '（整行）'} 无效"
        messages.append(text)
    return "；".join(messages)

"""The seed's request and response models (field names are the contract clients speak)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WrapSerializer

from ..engines.base import PUBLIC, Hit

if TYPE_CHECKING:
    from ..db.models import ChatSession, Memory, Upload

ID_MAX = 128
# No control characters (C0, DEL, C1) and no "/" in ids: they end up in URLs, logs and file names.
# Empty is allowed by the type so the routes can answer the seed's 400 ("用户ID不能为空").
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f/]*$"
IdStr = Annotated[str, StringConstraints(max_length=ID_MAX, pattern=ID_PATTERN)]
JSON_MAX_DEPTH = 5
JSON_MAX_KEYS = 50


def valid_id(value: str) -> bool:
    """What IdStr admits, plus non-empty: for ids that arrive outside a schema (tokens, path checks)."""
    return (
        0 < len(value) <= ID_MAX
        and "/" not in value
        and not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in value)
    )


def _check_json(value: Any, depth: int, keys: list[int]) -> None:
    # PostgreSQL cannot store NUL in text or JSONB, and unbounded nesting costs every reader: refuse both.
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("不能包含空字符")
        return
    if isinstance(value, dict | list):
        if depth > JSON_MAX_DEPTH:
            raise ValueError(f"嵌套层级不能超过 {JSON_MAX_DEPTH} 层")
        if isinstance(value, dict):
            keys[0] += len(value)
            if keys[0] > JSON_MAX_KEYS:
                raise ValueError(f"键的数量不能超过 {JSON_MAX_KEYS} 个")
            for key, item in value.items():
                _check_json(key, depth, keys)
                _check_json(item, depth + 1, keys)
        else:
            for item in value:
                _check_json(item, depth + 1, keys)


def bounded_json(value: Any) -> Any:
    """Metadata and message parts: at most 5 levels deep, 50 keys in all, no NUL anywhere."""
    if value is not None:
        _check_json(value, 1, [0])
    return value


def no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("不能包含空字符")
    return value


Text = Annotated[str, AfterValidator(no_nul)]
BoundedMetadata = Annotated[dict[str, Any] | None, AfterValidator(bounded_json)]


class ChatMessage(BaseModel):
    """A customer's message: plain text, or a list of typed parts (text and images)."""

    role: Literal["user"] = "user"
    # Parts are checked by the chat service so a malformed list gets the seed's 400 message.
    content: Annotated[str | list[Any], AfterValidator(bounded_json)]


class ChatRequest(BaseModel):
    user_id: IdStr
    session_id: IdStr
    message: ChatMessage


class ChatResponse(BaseModel):
    session_id: str
    message_id: int
    content: str
    engine: str
    status: str


class SessionRequest(BaseModel):
    user_id: IdStr
    title: Text | None = Field(default=None, max_length=200)
    description: Text | None = Field(default=None, max_length=2000)


class SessionResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    session_id: str
    user_id: str
    title: str
    created_at: str
    message_count: int
    last_activity: str
    status: str = "active"

    @classmethod
    def from_row(cls, row: ChatSession) -> SessionResponse:
        return cls(
            session_id=row.id,
            user_id=row.user_id,
            title=row.title,
            created_at=row.created_at.isoformat(),
            message_count=row.message_count,
            last_activity=row.last_activity_at.isoformat(),
            status=row.status,
        )


class StopResult(BaseModel):
    session_id: str
    stopped: bool  # false: nothing was being generated


class UploadData(BaseModel):
    file_url: str
    filename: str
    original_filename: str
    size: int
    content_type: str
    width: int
    height: int
    upload_time: str

    @classmethod
    def from_row(cls, row: Upload, *, url: str) -> UploadData:
        return cls(
            file_url=url,
            filename=row.stored_name,
            original_filename=row.original_name,
            size=row.size,
            content_type=row.content_type,
            width=row.width,
            height=row.height,
            upload_time=row.created_at.isoformat(),
        )


class MemoryAddRequest(BaseModel):
    user_id: IdStr
    content: Text = Field(max_length=10_000)
    metadata: BoundedMetadata = None


class MemoryAdded(BaseModel):
    memory_id: int
    user_id: str
    created_at: str

    @classmethod
    def from_row(cls, row: Memory) -> MemoryAdded:
        return cls(memory_id=row.id, user_id=row.owner_id, created_at=row.created_at.isoformat())


class MemoryRetrieveRequest(BaseModel):
    user_id: IdStr
    query: Text = Field(max_length=2_000)
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

    @classmethod
    def from_hit(cls, hit: Hit) -> MemoryItem:
        """A retrieved memory as `/memory/retrieve` and the `sources` event show it."""
        item = cls(
            id=hit.id,
            content=hit.content,
            type=hit.scope,  # type: ignore[arg-type]  # one of the three scopes
            relevance_score=round(hit.score, 4),
            created_at=hit.created_at.isoformat() if hit.created_at else None,
        )
        if hit.scope == PUBLIC:
            item.title, item.category, item.question = hit.title, hit.category, hit.question
        return item

    def wire(self) -> dict[str, Any]:
        """The item as clients have always received it: title, category and question on public items only."""
        return self.model_dump(exclude=None if self.type == PUBLIC else {"title", "category", "question"})


# A MemoryItem sent as `wire()` shows it. The serializer has no return annotation on purpose: the
# documented schema stays MemoryItem's (title, category and question are optional there).
WireMemoryItem = Annotated[MemoryItem, WrapSerializer(lambda item, _handler: item.wire())]


class RetrievedMemories(BaseModel):
    query: str
    total_count: int
    memories: list[WireMemoryItem]

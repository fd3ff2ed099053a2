"""The agent console's tickets (留言) and canned replies (快捷回复): request bodies and answers."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .customer import Text

if TYPE_CHECKING:
    from ..db.models import CannedReply, Ticket

SHORTCUT_MAX = 32
CANNED_CONTENT_MAX = 2000
# Letters (any script), digits, "_" and "-": typed after "/" in the reply box, so no space or "/".
SHORTCUT_PATTERN = r"^[\w-]+$"

TicketStatus = Literal["open", "closed"]


class TicketOut(BaseModel):
    id: int
    user_id: str
    session_id: str
    content: str = Field(description="客户的留言（同一会话的多条消息按行合并）")
    phone: str | None = Field(description="留言中识别出的电话（手机优先，其次座机）")
    email: str | None = Field(description="留言中识别出的邮箱")
    status: TicketStatus
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    closed_by: str | None

    @classmethod
    def of(cls, row: Ticket) -> TicketOut:
        return cls(
            id=row.id,
            user_id=row.user_id,
            session_id=row.session_id,
            content=row.content,
            phone=row.phone,
            email=row.email,
            status="closed" if row.status == "closed" else "open",
            created_at=row.created_at,
            updated_at=row.updated_at,
            closed_at=row.closed_at,
            closed_by=row.closed_by,
        )


class TicketPage(BaseModel):
    items: list[TicketOut]
    total: int = Field(description="符合筛选条件的留言总数")
    open_count: int = Field(description="未处理的留言数")
    page: int
    page_size: int


class CannedReplyOut(BaseModel):
    id: int
    shortcut: str
    content: str
    shared: bool = Field(description="公共快捷回复（主管管理，所有客服可见）")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: CannedReply) -> CannedReplyOut:
        return cls(
            id=row.id,
            shortcut=row.shortcut,
            content=row.content,
            shared=row.owner_id == "",
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class CannedReplyList(BaseModel):
    items: list[CannedReplyOut] = Field(description="自己的快捷回复在前，公共的在后，各按快捷短语排序")


class CannedReplyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    shortcut: str = Field(min_length=1, max_length=SHORTCUT_MAX, pattern=SHORTCUT_PATTERN)
    content: Text = Field(min_length=1, max_length=CANNED_CONTENT_MAX)
    shared: bool = False


class CannedReplyPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    shortcut: str | None = Field(
        default=None, min_length=1, max_length=SHORTCUT_MAX, pattern=SHORTCUT_PATTERN
    )
    content: Text | None = Field(default=None, min_length=1, max_length=CANNED_CONTENT_MAX)

    @model_validator(mode="after")
    def _something(self) -> CannedReplyPatch:
        if self.shortcut is None and self.content is None:
            raise ValueError("至少需要修改快捷短语或内容之一")
        return self

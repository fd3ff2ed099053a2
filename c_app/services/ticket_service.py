"""Tickets (留言): what a customer writes while nobody can take the conversation, for the agents to
answer later.

    ticket = await tickets.record(user_id, session_id, "我的手机是13812345678，请回电")
    ticket.phone                        # "13812345678" (found with privacy.pii's detectors)
    await tickets.page(status="open", page=1, page_size=20)
    await tickets.close(ticket.id, agent_id="a1")

One open ticket per session: the customer's later messages in that session are appended to it (a
line each), and the contact details are read again from each message (a later one corrects an
earlier one), until the ticket reaches TICKET_MAX_CHARS, after which a new one starts. A mobile
number is preferred over a landline. Closing is once only: a second close (or a second agent at the
same moment) gets 409 and changes nothing; a close is written to the audit log (`ticket.close`,
the agent as actor, the customer named) in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..db import tickets as repo
from ..db.engine import Database
from ..db.models import Ticket, utcnow
from ..errors import Conflict, NotFound
from ..privacy.pii import EMAIL, LANDLINE, PHONE, find_pii
from .audit_service import AuditContext, AuditService

TICKET_MAX_CHARS = 20_000
EMPTY_MESSAGE = "（客户发送了一条没有文字的消息）"


@dataclass(frozen=True, slots=True)
class Contact:
    phone: str | None
    email: str | None


def find_contact(text: str) -> Contact:
    """The first mobile number (else landline) and the first e-mail address in `text`, as written."""
    found = find_pii(text)
    by_kind: dict[str, str] = {}
    for item in found:
        by_kind.setdefault(item.kind, text[item.start : item.end])
    return Contact(phone=by_kind.get(PHONE) or by_kind.get(LANDLINE), email=by_kind.get(EMAIL))


class TicketService:
    def __init__(self, db: Database, audit: AuditService | None = None) -> None:
        self.db = db
        self.audit = audit

    async def record(self, user_id: str, session_id: str, text: str) -> Ticket:
        """Store what the customer wrote in a session nobody can take: the session's open ticket
        grows by a line, or a new one starts."""
        line = text.strip() or EMPTY_MESSAGE
        contact = find_contact(line)
        now = utcnow()
        async with self.db.transaction() as db:
            ticket = await repo.open_for_session(db, session_id, user_id)
            if ticket is not None and len(ticket.content) + 1 + len(line) <= TICKET_MAX_CHARS:
                ticket.content = f"{ticket.content}\n{line}"
                ticket.phone = contact.phone or ticket.phone
                ticket.email = contact.email or ticket.email
                ticket.updated_at = now
                await db.flush()
                return ticket
            return await repo.add(
                db,
                user_id=user_id,
                session_id=session_id,
                content=line[:TICKET_MAX_CHARS],
                phone=contact.phone,
                email=contact.email,
                at=now,
            )

    async def page(self, *, status: str | None, page: int, page_size: int) -> tuple[list[Ticket], int]:
        """One page of tickets (open first, oldest first; then closed, newest first) and the total."""
        async with self.db.read() as db:
            return await repo.page(db, status=status, limit=page_size, offset=(page - 1) * page_size)

    async def count_open(self) -> int:
        async with self.db.read() as db:
            return await repo.count_open(db)

    async def close(self, ticket_id: int, *, agent_id: str, context: AuditContext | None = None) -> Ticket:
        async with self.db.transaction() as db:
            if not await repo.close(db, ticket_id, by=agent_id, at=utcnow()):
                if await repo.get(db, ticket_id) is None:
                    raise NotFound("留言不存在")
                raise Conflict("该留言已处理")
            ticket = await repo.get(db, ticket_id)
            assert ticket is not None
            await db.refresh(ticket)
            if self.audit is not None and context is not None:
                await self.audit.record(
                    context,
                    "ticket.close",
                    target_type="ticket",
                    target_id=ticket.id,
                    customer_id=ticket.user_id,
                    db=db,
                )
            return ticket

"""The audit log (issue 14, item 6): every admin action on a customer's data or the knowledge base
is recorded (who, what, which, when, from where, which request) with counts and flags only; the
log is listed with filters and paging, newest first, and cannot be changed through the API; a
customer's erasure keeps their entries, under a pseudonym."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from c_app.db.models import AuditEntry
from c_app.services.audit_service import AuditContext, clean_detail

from .utils import assert_envelope, chat_body, rows

AUTH = {"Authorization": "Bearer t0k"}
AUDIT = "/api/v1/admin/audit"
KB = "/api/v1/admin/knowledge"
SECRET_ANSWER = "SECRET-ANSWER 发票开具后30天内可以换开"
SECRET_QUESTION = "SECRET-QUESTION 发票抬头写错了能改吗"
SECRET_FACT = "SECRET-FACT 会员卡号 VIP-20391"


@pytest.fixture
async def admin(start_app):
    app, client = await start_app(admin_token="t0k", load_sample_kb=False)
    client.headers.update(AUTH)
    return app, client


async def entries(app: Any) -> list[AuditEntry]:
    return sorted(await rows(app, AuditEntry), key=lambda row: row.id)


async def listing(client: Any, **params: Any) -> dict[str, Any]:
    response = await client.get(AUDIT, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return body["data"]


async def test_every_admin_action_is_recorded_with_no_content(admin) -> None:
    app, client = admin
    await client.post("/api/v1/chat/stream", json=chat_body(SECRET_QUESTION, user_id="u1", session_id="s1"))
    await client.post("/api/v1/chat/memory/add", json={"user_id": "u1", "content": SECRET_FACT})
    request_ids: dict[str, str] = {}

    created = await client.post(
        KB,
        json={"question": SECRET_QUESTION, "answer": SECRET_ANSWER},
        headers={"X-Request-Id": "req-create-1"},
    )
    entry_id = created.json()["data"]["id"]
    request_ids["knowledge.create"] = created.headers["X-Request-Id"]
    updated = await client.put(
        f"{KB}/{entry_id}", json={"answer": SECRET_ANSWER + "（更新）", "category": "发票"}
    )
    request_ids["knowledge.update"] = updated.headers["X-Request-Id"]
    imported = await client.post(
        f"{KB}/import",
        files={"file": ("faq.jsonl", json.dumps({"question": "问？", "answer": SECRET_ANSWER}))},
    )
    request_ids["knowledge.import"] = imported.headers["X-Request-Id"]
    exported = await client.get(f"{KB}/export", params={"format": "csv"})
    request_ids["knowledge.export"] = exported.headers["X-Request-Id"]
    deleted = await client.delete(f"{KB}/{entry_id}")
    request_ids["knowledge.delete"] = deleted.headers["X-Request-Id"]
    archive = await client.get("/api/v1/admin/customers/u1/export")
    request_ids["customer.export"] = archive.headers["X-Request-Id"]
    erased = await client.delete("/api/v1/admin/customers/u1")
    request_ids["customer.erase"] = erased.headers["X-Request-Id"]
    listed = await client.get(AUDIT)
    request_ids["audit.list"] = listed.headers["X-Request-Id"]
    for response in (created, updated, imported, exported, deleted, archive, erased, listed):
        assert response.status_code == 200, response.text

    log = await entries(app)
    assert [row.action for row in log] == list(request_ids)
    assert request_ids["knowledge.create"] == "req-create-1"
    for row in log:
        assert (row.actor, row.actor_role) == ("admin", "admin")
        assert row.address == "127.0.0.1"
        assert row.request_id == request_ids[row.action]
        assert datetime.now(UTC) - row.created_at < timedelta(minutes=1)
    by_action = {row.action: row for row in log}
    assert (by_action["knowledge.create"].target_type, by_action["knowledge.create"].target_id) == (
        "knowledge",
        str(entry_id),
    )
    assert by_action["knowledge.create"].customer_id is None
    assert by_action["knowledge.update"].detail == {"fields": ["answer", "category"]}
    assert by_action["knowledge.import"].detail["created"] == 1
    assert by_action["knowledge.import"].detail["strict"] is False
    assert by_action["knowledge.export"].detail == {"format": "csv"}
    assert by_action["customer.export"].detail["messages"] == 2
    assert by_action["customer.export"].detail["private_memories"] == 1
    assert by_action["customer.erase"].detail["messages"] == 2
    assert by_action["customer.erase"].detail["audit_entries_pseudonymised"] == 1  # the export's entry
    assert by_action["audit.list"].detail == {"filters": [], "page": 1, "returned": 7}
    # Ids, counts and flags: none of the data itself, anywhere in the log.
    dumped = json.dumps([AuditOut(row) for row in log], ensure_ascii=False)
    for secret in ("SECRET-ANSWER", "SECRET-QUESTION", "SECRET-FACT", "VIP-20391", "发票"):
        assert secret not in dumped


def AuditOut(row: AuditEntry) -> dict[str, Any]:
    return {column.name: str(getattr(row, column.key)) for column in AuditEntry.__table__.columns}


async def test_reads_of_the_public_knowledge_base_are_not_recorded(admin) -> None:
    app, client = admin
    created = await client.post(KB, json={"question": "支持货到付款吗", "answer": "暂不支持。"})
    entry_id = created.json()["data"]["id"]
    before = len(await entries(app))
    assert (await client.get(KB)).status_code == 200
    assert (await client.get(f"{KB}/{entry_id}")).status_code == 200
    assert (await client.post(f"{KB}/hit-test", json={"query": "货到付款"})).status_code == 200
    assert len(await entries(app)) == before


async def test_refused_and_failed_changes_are_not_recorded_as_done(admin) -> None:
    app, client = admin
    assert_envelope(await client.put(f"{KB}/999", json={"answer": "x"}), 404)
    assert_envelope(await client.delete(f"{KB}/999"), 404)
    bad = await client.post(f"{KB}/import", files={"file": ("f.jsonl", "{not json")}, data={"strict": "true"})
    assert_envelope(bad, 422)
    log = await entries(app)
    # The rejected strict import is recorded (an attempt, nothing changed); the 404s are not.
    assert [(row.action, row.detail["rejected"], row.detail["created"]) for row in log] == [
        ("knowledge.import", True, 0)
    ]


async def test_listing_filters_pages_and_orders_newest_first(admin) -> None:
    app, client = admin
    services = app.state.services
    context = AuditContext(actor="admin", role="admin")
    for i in range(5):
        await services.audit.record(
            context, "customer.export", target_type="customer", target_id=f"c{i}", customer_id=f"c{i % 2}"
        )
    await services.audit.record(context, "knowledge.delete", target_type="knowledge", target_id="7")
    agent = AuditContext(actor="agent-42", role="agent", address="10.0.0.9", request_id="r-agent")
    await services.audit.record(
        agent, "session.reply", target_type="session", target_id="s1", customer_id="c1"
    )

    everything = await listing(client, page_size=100)
    assert everything["total"] == 7
    ids = [item["id"] for item in everything["items"]]
    assert ids == sorted(ids, reverse=True)
    assert everything["items"][0]["actor"] == "agent-42" and everything["items"][0]["actor_role"] == "agent"

    pages = [await listing(client, action="customer.export", page=page, page_size=2) for page in (1, 2, 3, 4)]
    assert [p["total"] for p in pages] == [5] * 4
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    paged = [item["target_id"] for p in pages for item in p["items"]]
    assert paged == ["c4", "c3", "c2", "c1", "c0"]
    assert (await listing(client, action="audit.list"))["total"] == 5  # every listing is recorded too

    assert {i["action"] for i in (await listing(client, action="customer.export"))["items"]} == {
        "customer.export"
    }
    assert (await listing(client, action="customer.export"))["total"] == 5
    by_customer = await listing(client, customer_id="c1")
    assert {(i["action"], i["customer_id"]) for i in by_customer["items"]} == {
        ("customer.export", "c1"),
        ("session.reply", "c1"),
    }
    assert by_customer["total"] == 3
    assert (await listing(client, target_type="knowledge"))["total"] == 1

    newest = (await listing(client, page_size=1))["items"][0]["created_at"]
    later = datetime.fromisoformat(newest) + timedelta(seconds=1)
    assert (await listing(client, since=later.isoformat()))["total"] == 0
    assert (await listing(client, until=later.isoformat(), action="knowledge.delete"))["total"] == 1
    naive = later.replace(tzinfo=None).isoformat()  # no zone: UTC
    assert (await listing(client, since=naive))["total"] == 0
    assert_envelope(await client.get(AUDIT, params={"since": later.isoformat(), "until": newest}), 400)
    assert_envelope(await client.get(AUDIT, params={"since": "yesterday"}), 422)
    assert_envelope(await client.get(AUDIT, params={"page_size": 1000}), 422)
    assert_envelope(await client.get(AUDIT, params={"customer_id": "a\x01b"}), 422)


async def test_the_log_cannot_be_changed_through_the_api(admin) -> None:
    app, client = admin
    await client.get(AUDIT)
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        assert_envelope(await client.request(method, AUDIT, json={}), 405)
    spec = app.openapi()
    assert set(spec["paths"][AUDIT]) == {"get"}
    assert not any(path.startswith(AUDIT + "/") for path in spec["paths"])
    assert len(await entries(app)) == 1


async def test_the_audit_route_refuses_without_the_admin_token(start_app) -> None:
    _app, client = await start_app(admin_token="t0k")
    assert_envelope(await client.get(AUDIT), 401)
    assert_envelope(await client.get(AUDIT, headers={"Authorization": "Bearer nope"}), 401)
    _app, client = await start_app()
    assert_envelope(await client.get(AUDIT, headers=AUTH), 401)


async def test_an_erasure_keeps_the_customers_entries_under_a_pseudonym(admin) -> None:
    app, client = admin
    await client.post("/api/v1/chat/memory/add", json={"user_id": "u1", "content": SECRET_FACT})
    await client.get("/api/v1/admin/customers/u1/export")
    await client.get("/api/v1/admin/customers/u2/export")
    await client.get(AUDIT, params={"customer_id": "u1"})
    erased = await client.delete("/api/v1/admin/customers/u1")
    assert erased.json()["data"]["audit_entries_pseudonymised"] == 2  # the export, the filtered listing

    log = await entries(app)
    assert [row.action for row in log] == [
        "customer.export",
        "customer.export",
        "audit.list",
        "customer.erase",
    ]
    pseudonym = log[0].customer_id
    assert pseudonym is not None and pseudonym.startswith("erased:") and pseudonym != "u1"
    assert [row.customer_id for row in log] == [pseudonym, "u2", pseudonym, pseudonym]
    assert log[0].target_id == pseudonym and log[-1].target_id == pseudonym
    assert all("u1" not in json.dumps(AuditOut(row)) for row in log)

    # An operator given the id still finds what was done to that customer.
    found = await listing(client, customer_id="u1")
    assert [item["action"] for item in found["items"]] == ["customer.erase", "audit.list", "customer.export"]
    # The same id always maps to the same pseudonym (a second erasure keeps them together).
    await client.get("/api/v1/admin/customers/u1/export")
    again = await client.delete("/api/v1/admin/customers/u1")
    assert again.json()["data"]["audit_entries_pseudonymised"] == 2  # the listing above, the export
    assert {
        row.customer_id
        for row in await entries(app)
        if row.action.startswith("customer.") and row.customer_id != "u2"
    } == {pseudonym}


async def test_an_entry_written_in_the_callers_transaction_rolls_back_with_it(admin) -> None:
    """How an agent action will record: in its own transaction, so the entry and the change agree."""
    app, _client = admin
    services = app.state.services
    agent = AuditContext(actor="agent-7", role="agent")

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with services.db.transaction() as db:
            await services.audit.record(agent, "session.close", target_type="session", target_id="s1", db=db)
            raise Abort
    assert await entries(app) == []
    async with services.db.transaction() as db:
        await services.audit.record(agent, "session.close", target_type="session", target_id="s1", db=db)
    assert [row.actor for row in await entries(app)] == ["agent-7"]
    with pytest.raises(ValueError):
        await services.audit.record(AuditContext(actor="x", role="boss"), "x", target_type="x")


def test_detail_keeps_counts_and_flags_only() -> None:
    detail = {
        "messages": 3,
        "strict": True,
        "ratio": 0.5,
        "format": "csv",
        "fields": ["answer", "category"],
        "question": "发票抬头写错了能改吗",
        "answer": "Invoices can be reissued within 30 days",
        "nested": {"content": "x"},
        "many": ["a"] * 50,
        "Bad Key": 1,
    }
    assert clean_detail(detail) == {
        "messages": 3,
        "strict": True,
        "ratio": 0.5,
        "format": "csv",
        "fields": ["answer", "category"],
    }

"""Index sync at the service level: two replicas' services on one database, no HTTP.

What one replica writes, the other finds after it follows the change log; a replica finds its
own writes at once; a change whose transaction commits late (a gap in the log) is not lost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from c_app.config import Settings
from c_app.container import Services, build_services
from c_app.db import memories as repo
from c_app.db.memories import PUBLIC
from c_app.schemas.knowledge import KnowledgeEntryIn, KnowledgeEntryPatch

from .conftest import BACKEND


@pytest.fixture
async def replicas(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Services, Services]]:
    settings = make_settings(load_sample_kb=False)
    first, second = build_services(settings), build_services(settings)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


def ids(hits: list[Any]) -> list[int]:
    return [hit.id for hit in hits]


async def test_a_replica_finds_anothers_knowledge_base_writes_after_following_the_log(replicas) -> None:
    a, b = replicas
    row = await a.knowledge.create(KnowledgeEntryIn(question="支持货到付款吗", answer="暂不支持货到付款。"))
    assert ids(await a.knowledge.search("货到付款", limit=3)) == [row.id]  # its own write, at once

    await b.sync.refresh(force=True)
    assert ids(await b.knowledge.search("货到付款", limit=3)) == [row.id]

    await a.knowledge.update(row.id, KnowledgeEntryPatch(question="可以开增值税专用发票吗"))
    await b.sync.refresh(force=True)
    assert await b.knowledge.search("货到付款", limit=3) == []
    assert ids(await b.knowledge.search("增值税专用发票", limit=3)) == [row.id]

    await a.knowledge.delete(row.id)
    await b.sync.refresh(force=True)
    assert await b.knowledge.search("增值税专用发票", limit=3) == []


async def test_a_users_memories_written_elsewhere_reach_an_index_already_loaded(replicas) -> None:
    a, b = replicas
    assert await b.memory.search("u1", "会员卡号", limit=3) == []  # b now holds u1's indexes
    fact = await a.memory.add_private("u1", "我的会员卡号是 VIP-20391")
    await a.memory.add_exchange("u1", "你们几点关门", "晚上十点。", "s1", grounded=True)

    hits = await b.memory.search("u1", "会员卡号", limit=3)
    assert [(hit.id, hit.scope) for hit in hits][:1] == [(fact.id, "private")]
    assert any(hit.scope == "chat" for hit in await b.memory.search("u1", "几点关门", limit=3))
    assert await b.memory.search("u2", "会员卡号", limit=3) == []  # nobody else's

    await a.memory.delete_private("u1", fact.id)
    assert all(hit.id != fact.id for hit in await b.memory.search("u1", "会员卡号", limit=3))


async def test_nothing_is_kept_per_user_between_searches(replicas) -> None:
    a, _ = replicas

    def sizes() -> dict[str, int]:
        return {k: len(v) for k, v in vars(a.sync).items() if isinstance(v, (dict, list, set))}

    await a.memory.add_private("u0", "u0 的收货城市是杭州")
    assert await a.memory.search("u0", "收货城市", limit=3)
    before = sizes()
    for user in ("u1", "u2", "u3"):
        await a.memory.add_private(user, f"{user} 的收货城市是杭州")
        assert (await a.memory.search(user, "收货城市", limit=3))[0].content == f"{user} 的收货城市是杭州"
    assert sizes() == before  # no per-user index, cache or bookkeeping grew


@pytest.mark.skipif(BACKEND != "postgresql", reason="SQLite serialises writers: no transaction commits late")
async def test_a_change_that_commits_after_a_later_one_is_not_lost(replicas) -> None:
    a, b = replicas
    # A slow writer takes a sequence number first and commits last.
    async with a.db.transaction() as slow:
        late = await repo.add(
            slow, scope=PUBLIC, owner_id="", question="发票抬头可以改吗", content="可以修改。"
        )
        early = await a.knowledge.create(KnowledgeEntryIn(question="支持货到付款吗", answer="暂不支持。"))
        await b.sync.refresh(force=True)
        assert ids(await b.knowledge.search("货到付款", limit=3)) == [early.id]
        assert await b.knowledge.search("发票抬头", limit=3) == []
    await b.sync.refresh(force=True)
    assert ids(await b.knowledge.search("发票抬头", limit=3)) == [late.id]

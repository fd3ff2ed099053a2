"""A user's memories are ranked per request from their rows and the analysed terms stored with them.

The scores are those of an index holding exactly that user's memories (the pre-existing ranking);
a row without stored terms (written before they were kept, or changed without new ones) is analysed
on its search and its terms are stored; another replica's
write is found at once, with no change log to follow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from sqlalchemy import select, update

from c_app.config import Settings
from c_app.container import Services, build_services
from c_app.db import memories as repo
from c_app.db.models import Memory
from c_app.retrieval import LexicalIndex, stored
from c_app.retrieval.index import analyse
from c_app.retrieval.stored import usable
from c_app.services.index_sync import index_fields

FACTS = [
    "我的会员卡号是 VIP-20391",
    "收货地址改成杭州市西湖区文三路",
    "发票抬头请开公司名称：杭州某某科技有限公司",
    "我对花生过敏，送餐不要放花生",
    "周末不方便收快递，请工作日送",
]
QUESTIONS = ["你们几点关门", "发票怎么开", "会员卡丢了怎么办"]
QUERIES = ["会员卡号", "发票抬头", "收货地址在哪", "花生", "周末送货", "几点关门", "发票", "完全无关的词"]


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


async def tokens_of(services: Services, *ids: int) -> dict[int, bytes | None]:
    async with services.db.read() as db:
        found = await db.execute(select(Memory.id, Memory.tokens).where(Memory.id.in_(ids)))
        return dict(found.all())  # type: ignore[arg-type]


async def fill(services: Services, user: str) -> list[Memory]:
    rows = [await services.memory.add_private(user, fact) for fact in FACTS]
    for q in QUESTIONS:
        await services.memory.add_exchange(user, q, f"关于{q}的答复", "s1", grounded=True)
    assert rows
    return await fill_rows(services, user)


async def fill_rows(services: Services, user: str) -> list[Memory]:
    async with services.db.read() as db:
        found = await db.execute(select(Memory).where(Memory.owner_id == user).order_by(Memory.id))
        return list(found.scalars())


async def test_scores_are_those_of_an_index_of_the_users_memories(replicas) -> None:
    a, _ = replicas
    memories = await fill(a, "u1")
    stored = await tokens_of(a, *[m.id for m in memories])
    assert all(usable(stored[m.id]) for m in memories)  # terms stored at write
    for scope in ("private", "chat"):
        index = LexicalIndex()  # what a per-user index held before
        for m in memories:
            if m.scope == scope:
                index.upsert(m.id, *index_fields(m))
        for query in QUERIES:
            expected = index.search(query, 3)
            got = [(doc, score) for s, doc, score in await a.sync.hits("u1", [scope], query, 3) if s == scope]
            assert [doc for doc, _ in got] == [doc for doc, _ in expected], query
            assert [score for _, score in got] == pytest.approx([score for _, score in expected], abs=1e-6)


async def test_rows_without_or_with_stale_terms_are_analysed_and_stored(replicas) -> None:
    a, _ = replicas
    memories = await fill(a, "u1")
    card = next(m for m in memories if "会员卡号" in m.content)
    async with a.db.transaction() as db:
        await db.execute(update(Memory).where(Memory.owner_id == "u1").values(tokens=None))  # pre-0012 rows
        # And one edited in SQL: analysed from its new text.
        await db.execute(update(Memory).where(Memory.id == card.id).values(content="我的积分卡号是 JF-7788"))
    stored = await tokens_of(a, card.id)
    assert stored[card.id] is None
    index = LexicalIndex()  # the user's private memories as they now read
    for m in await fill_rows(a, "u1"):
        if m.scope == "private":
            index.upsert(m.id, *index_fields(m))

    got = [hit for hit in await a.sync.hits("u1", ["private", "chat"], "积分卡号", 3) if hit[0] == "private"]
    expected = index.search("积分卡号", 3)
    assert [doc for _, doc, _ in got] == [doc for doc, _ in expected]
    assert [score for _, _, score in got] == pytest.approx([score for _, score in expected], abs=1e-6)
    assert got[0][1] == card.id
    after = await tokens_of(a, *[m.id for m in memories])
    assert all(after[m.id] for m in memories)  # written back: the next search analyses nothing

    async with a.db.transaction() as db:  # a change through the repository, not setting new terms
        row = await repo.get(db, card.id, scope="private", owner_id="u1")
        assert row is not None
        row.content = "我的会员卡号是 VIP-1"
        await repo.touch(db, row)
    assert (await tokens_of(a, card.id))[card.id] is None  # cleared with the change
    hits = await a.memory.search("u1", "会员卡号", limit=3)
    assert hits[0].id == card.id and hits[0].content == "我的会员卡号是 VIP-1"
    assert await tokens_of(a, card.id) != after  # re-analysed from the new text


async def test_another_replicas_write_is_found_at_once_without_following_the_log(replicas) -> None:
    a, b = replicas
    fact = await a.memory.add_private("u1", "我的会员卡号是 VIP-20391")
    # b does not refresh from the change log: the user's rows are read per search.
    b.settings.index_refresh_interval = 3600
    b.sync._last_poll = float("inf")
    assert [hit.id for hit in await b.memory.search("u1", "会员卡号", limit=3)] == [fact.id]
    await a.memory.update_private("u1", fact.id, content="收货城市是苏州", metadata=None)
    assert await b.memory.search("u1", "会员卡号", limit=3) == []
    assert [hit.id for hit in await b.memory.search("u1", "收货城市", limit=3)] == [fact.id]
    assert await b.memory.search("u2", "收货城市", limit=3) == []  # nobody else's


DOCS = {
    1: (["怎么退款", "退货以后多久退款", "可以七天无理由退货吗"], "退款说明"),
    2: (["发票怎么开"], ""),
    3: (["会员卡号是多少"], "会员"),
    4: (["我的会员卡号是 VIP-20391"], ""),
    5: (["运费谁出", "包邮吗"], "运费"),
}


def test_ranking_from_stored_bytes_matches_an_index_of_the_same_docs() -> None:
    index = LexicalIndex()
    for doc, fields in DOCS.items():
        index.upsert(doc, *fields)
    docs = [(doc, stored.encode(analyse(*fields))) for doc, fields in DOCS.items()]
    assert all(usable(blob) for _, blob in docs)
    for query in [*QUERIES, "退款多久到账", "VIP-20391", "包邮", "退货退款运费"]:
        expected = index.search(query, 3)
        got = stored.rank(docs, query, 3)
        assert [doc for doc, _ in got] == [doc for doc, _ in expected], query
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-6)


def test_damaged_or_foreign_stored_bytes_are_not_usable() -> None:
    blob = stored.encode(analyse(["发票怎么开"], ""))
    assert usable(blob)
    assert not usable(blob[:-3])  # truncated
    assert not usable(b"")
    assert not usable(None)
    foreign = bytearray(blob)
    foreign[0] ^= 0xFF  # another analyzer's header
    assert not usable(bytes(foreign))
    bad = np.frombuffer(blob, dtype=stored.RECORD).copy()
    bad["w"][1] = 7.0  # a weight outside (0, 1]
    assert not stored.valid_values([(1, bad.tobytes())])
    assert stored.valid_values([(1, blob)])


async def test_a_row_with_damaged_terms_is_analysed_again(replicas) -> None:
    a, _ = replicas
    memories = await fill(a, "u1")
    expected = await a.sync.hits("u1", ["private", "chat"], "会员卡号", 3)
    card = next(m for m in memories if "会员卡号" in m.content)
    good = (await tokens_of(a, card.id))[card.id] or b""
    bad = np.frombuffer(good, dtype=stored.RECORD).copy()
    bad["tf"][1] = -3
    async with a.db.transaction() as db:
        await db.execute(update(Memory).where(Memory.id == card.id).values(tokens=bad.tobytes()))
    got = await a.sync.hits("u1", ["private", "chat"], "会员卡号", 3)
    assert [(s, d) for s, d, _ in got] == [(s, d) for s, d, _ in expected]
    assert [x for _, _, x in got] == pytest.approx([x for _, _, x in expected], abs=1e-9)
    assert (await tokens_of(a, card.id))[card.id] == good  # rewritten from the text

"""Optional dense retrieval against the stand-in embeddings endpoint over real HTTP.

The stand-in embeds a text as a bag of its characters, so a paraphrase written with the same
characters in other words is close to the query in vector space even when it shares few of the
words and bigrams the lexical index weighs.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from c_app.db.models import MemoryVector
from c_app.retrieval.dense import text_hash
from c_app.schemas.knowledge import KnowledgeEntryPatch

from .llm_standin import StandIn, hashed_embedding
from .utils import count, rows

QUERY = "我的快递为什么还没有到"
PARAPHRASE = "东西怎么还没送到我这里"
DISTRACTOR = "快递公司有哪些"
ENTRIES: list[dict[str, Any]] = [
    {
        "external_id": "para",
        "question": PARAPHRASE,
        "answer": "物流延误时请在订单页点击“催促发货”，我们会为您跟进。",
    },
    {"external_id": "d1", "question": DISTRACTOR, "answer": "我们合作的快递公司有顺丰、中通和京东物流。"},
    {"external_id": "d2", "question": "快递单号查询", "answer": "在“我的订单”中可以看到快递单号。"},
    {"external_id": "d3", "question": "快递费怎么算", "answer": "满99元包邮，不满收取8元运费。"},
    {"external_id": "f1", "question": "如何修改绑定的手机号", "answer": "在“账户设置”中修改手机号。"},
    {"external_id": "f2", "question": "发票怎么开", "answer": "订单完成后可在订单详情页申请电子发票。"},
    {"external_id": "f3", "question": "会员积分有什么用", "answer": "积分可以抵扣现金，100积分抵1元。"},
]


def dense_settings(standin: StandIn) -> dict[str, Any]:
    # The stand-in's 64-dim character bags give unrelated Chinese texts cosines around 0.2-0.4,
    # so no floor is subtracted here (a real model is configured with its own).
    return {
        "load_sample_kb": False,
        "embedding_base_url": standin.base_url,  # type: ignore[attr-defined]
        "embedding_model": "standin-embed",
        "embedding_timeout": 2.0,
        "embedding_min_similarity": 0.0,
    }


async def retrieve(client: Any, query: str, limit: int = 5) -> list[dict[str, Any]]:
    response = await client.post(
        "/api/v1/chat/memory/retrieve", json={"user_id": "dense-user", "query": query, "limit": limit}
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["memories"]


async def load_entries(app: Any) -> dict[str, int]:
    """Import the fixture entries in one batch; returns external_id -> memory id."""
    services = app.state.services
    await services.knowledge.upsert([dict(e) for e in ENTRIES])
    if services.sync.dense is not None:
        await services.sync.dense.drain()
    entries, _ = await services.knowledge.list_entries(page=1, page_size=50)
    return {row.external_id: row.id for row in entries}


async def test_imported_entries_get_their_vectors_stored_in_one_batch(start_app, standin) -> None:
    app, _ = await start_app(**dense_settings(standin))
    ids = await load_entries(app)

    # One import batch became one embeddings request, and every entry has its vector in the DB.
    assert standin.embedding_calls == 1
    stored = {v.memory_id: v for v in await rows(app, MemoryVector)}
    assert set(stored) == set(ids.values())
    para = stored[ids["para"]]
    assert para.model == "standin-embed" and para.dims == 64
    assert para.text_hash == text_hash(PARAPHRASE)
    np.testing.assert_allclose(
        np.frombuffer(para.vector, dtype="<f4"), hashed_embedding(PARAPHRASE), atol=1e-6
    )


async def test_an_edited_entry_is_embedded_again_and_a_deleted_one_loses_its_vector(
    start_app, standin
) -> None:
    app, _ = await start_app(**dense_settings(standin))
    ids = await load_entries(app)
    services = app.state.services

    await services.knowledge.update(ids["f2"], KnowledgeEntryPatch(question="电子发票在哪里下载"))
    await services.knowledge.delete(ids["f3"])
    await services.sync.dense.drain()

    stored = {v.memory_id: v for v in await rows(app, MemoryVector)}
    assert ids["f3"] not in stored
    assert stored[ids["f2"]].text_hash == text_hash("电子发票在哪里下载")
    np.testing.assert_allclose(
        np.frombuffer(stored[ids["f2"]].vector, dtype="<f4"),
        hashed_embedding("电子发票在哪里下载"),
        atol=1e-6,
    )


async def test_a_restart_reuses_the_stored_vectors(start_app, standin) -> None:
    app, _ = await start_app(**dense_settings(standin))
    await load_entries(app)
    calls = standin.embedding_calls

    second, client = await start_app(**dense_settings(standin))  # same database, a fresh process state
    await second.state.services.sync.dense.drain()
    assert standin.embedding_calls == calls  # nothing re-embedded at start
    assert len(second.state.services.sync.dense.store) == len(ENTRIES)
    hits = await retrieve(client, QUERY)
    assert hits[0]["content"] == ENTRIES[0]["answer"]


async def test_fused_ranking_finds_the_paraphrase_the_lexical_index_ranks_lower(start_app, standin) -> None:
    app, client = await start_app(**dense_settings(standin))
    ids = await load_entries(app)

    # The lexical index alone prefers the entry sharing the word 快递 ...
    lexical = app.state.services.sync.public_index.search(QUERY, 5)
    lexical_order = [doc for doc, _ in lexical]
    assert lexical_order.index(ids["d1"]) < lexical_order.index(ids["para"])

    # ... the fused ranking puts the paraphrase first, with a score still in [0, 1].
    hits = await retrieve(client, QUERY)
    assert hits[0]["id"] == ids["para"] and hits[0]["type"] == "public"
    assert all(0.0 <= h["relevance_score"] <= 1.0 for h in hits)
    # Dense evidence only ever raises a lexical score: an exact question still scores 1.
    exact = await retrieve(client, DISTRACTOR, limit=1)
    assert exact[0]["id"] == ids["d1"] and exact[0]["relevance_score"] == 1.0


async def test_an_embeddings_outage_falls_back_to_lexical_results(start_app, standin, caplog) -> None:
    app, client = await start_app(**dense_settings(standin))
    ids = await load_entries(app)
    dense = app.state.services.sync.dense
    dense.retry_after = 0.0  # try the endpoint on every request, to see that it is logged once

    standin.embeddings_down = True
    calls = standin.embedding_calls
    with caplog.at_level(logging.WARNING, logger="c_app.services.dense_search"):
        first = await retrieve(client, QUERY)
        second = await retrieve(client, QUERY)
    assert standin.embedding_calls > calls  # the endpoint was really tried, and failed
    lexical = [doc for doc, _ in app.state.services.sync.public_index.search(QUERY, 5)]
    assert [h["id"] for h in first] == [h["id"] for h in second] == lexical
    warnings = [r for r in caplog.records if "embeddings endpoint failing" in r.getMessage()]
    assert len(warnings) == 1

    # Writes still succeed while the endpoint is down, and are found lexically.
    response = await client.post(
        "/api/v1/chat/memory/add",
        json={"user_id": "dense-user", "content": "我的快递放在门卫室", "metadata": {}},
    )
    assert response.status_code == 200
    assert any(h["content"] == "我的快递放在门卫室" for h in await retrieve(client, "快递放在哪里"))

    # Back up: the fused ranking returns.
    standin.embeddings_down = False
    public = [h for h in await retrieve(client, QUERY) if h["type"] == "public"]
    assert public[0]["id"] == ids["para"]


async def test_without_embeddings_configured_no_call_is_made(start_app, standin) -> None:
    app, client = await start_app(load_sample_kb=False)
    assert app.state.services.sync.dense is None
    await load_entries(app)
    assert await retrieve(client, QUERY)
    assert standin.embedding_calls == 0
    assert await count(app, MemoryVector) == 0


async def test_the_query_reaches_the_embeddings_endpoint_with_personal_data_masked(
    start_app, standin
) -> None:
    app, client = await start_app(**dense_settings(standin))
    await load_entries(app)
    await retrieve(client, "我的手机号13812345678换了，发票怎么开")
    queries = [text for text in standin.embedding_inputs if "换了" in text]
    assert queries and all("13812345678" not in text and "[手机号1]" in text for text in queries)

"""The knowledge-base index starts from the snapshot in the database plus the change log after it.

A replica with an empty disk finds the snapshot another wrote, replays the log after it, and answers
exactly as a replica that built its index from the rows. A snapshot that is truncated, altered,
of another format or analyzer, of inconsistent shapes, a pickle, stale (the log after it is gone)
or from beyond this log is not used: the replica rebuilds from the rows, answers the same, and
replaces the snapshot with a good one. One replica at a time writes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import pickle
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, func, select, update

from c_app.config import Settings
from c_app.container import Services, build_services
from c_app.db import snapshots
from c_app.db.memories import PUBLIC
from c_app.db.models import IndexSnapshot, MemoryChange
from c_app.retrieval import snapshot
from c_app.schemas.knowledge import KnowledgeEntryIn, KnowledgeEntryPatch

ENTRIES = [
    ("支持货到付款吗", ["可以货到付款吗"], "暂不支持货到付款。"),
    ("发票怎么开", ["怎么开发票", "能开增值税专用发票吗"], "在订单详情页申请开票。"),
    ("多久发货", ["什么时候发货"], "付款后 48 小时内发货。"),
    ("怎么退货", ["退货流程是什么", "可以七天无理由退货吗"], "在订单页申请退货。"),
    ("运费谁出", [], "满 99 元包邮。"),
    ("会员有什么权益", ["会员积分怎么用"], "会员享受折扣与积分。"),
    ("怎么修改收货地址", ["地址填错了怎么办"], "发货前可在订单页修改地址。"),
    ("客服几点上班", ["人工客服工作时间"], "每天 9:00-21:00。"),
    ("？？？", [], "一条没有可检索词的条目。"),  # indexed with no terms: still one of the entries
]
QUERIES = [
    "货到付款",
    "开发票",
    "增值税发票",
    "什么时候发货",
    "退货",
    "包邮吗",
    "会员积分",
    "改地址",
    "人工客服",
    "无关的话",
]


class Planted:
    """A pickle whose loading would leave a file behind: proof it was never run."""

    marker: Path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pickle ran"))


@pytest.fixture
def snapshot_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "load_sample_kb": False,
            "index_snapshot_min_entries": 1,
            "index_snapshot_changes": 1,
            "index_snapshot_interval": 3600,  # snapshots in these tests are taken when the test says
        }
        return make_settings(**{**base, **overrides})

    return make


@pytest.fixture
async def started(snapshot_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    running: list[Services] = []

    async def start(**overrides: Any) -> Services:
        services = build_services(snapshot_settings(**overrides))
        running.append(services)
        await services.start()
        if services.sync._snapshot_task is not None:
            await services.sync._snapshot_task
        return services

    yield start
    for services in running:
        await services.aclose()


async def fill(services: Services) -> list[int]:
    ids = []
    for question, similar, answer in ENTRIES:
        row = await services.knowledge.create(
            KnowledgeEntryIn(question=question, similar_questions=similar, answer=answer)
        )
        ids.append(row.id)
    return ids


async def change_after_snapshot(services: Services, ids: list[int]) -> None:
    """Edits the snapshot does not hold: an addition, an edit and a removal."""
    await services.knowledge.create(KnowledgeEntryIn(question="可以用花呗付款吗", answer="支持花呗。"))
    await services.knowledge.update(ids[1], KnowledgeEntryPatch(question="电子发票在哪里下载"))
    await services.knowledge.delete(ids[4])


async def ranking(services: Services) -> list[list[tuple[int, float]]]:
    return [await services.sync.public_hits(query, 5) for query in QUERIES]


async def stored(services: Services) -> IndexSnapshot:
    async with services.db.read() as db:
        row = await snapshots.get(db, PUBLIC)
    assert row is not None
    return row


async def plant(services: Services, **values: Any) -> None:
    async with services.db.transaction() as db:
        await db.execute(update(IndexSnapshot).where(IndexSnapshot.name == PUBLIC).values(**values))


def npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def members(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def signed(blob: bytes) -> dict[str, Any]:
    return {"data": blob, "checksum": hashlib.sha256(blob).hexdigest()}


def assert_same(got: list[list[tuple[int, float]]], expected: list[list[tuple[int, float]]]) -> None:
    assert [[doc for doc, _ in hits] for hits in got] == [[doc for doc, _ in hits] for hits in expected]
    for hits, want in zip(got, expected, strict=True):
        assert [s for _, s in hits] == pytest.approx([s for _, s in want], abs=1e-9)


async def test_a_fresh_replica_starts_from_the_snapshot_and_the_log_after_it(started) -> None:
    a = await started()
    ids = await fill(a)
    assert await a.sync.save_snapshot(force=True)
    row = await stored(a)
    assert (row.version, row.entries, row.lease) == (snapshot.FORMAT_VERSION, len(ENTRIES), "")
    assert row.checksum == hashlib.sha256(row.data or b"").hexdigest()
    await change_after_snapshot(a, ids)

    b = await started()
    assert (b.sync.started_from, b.sync.snapshot_rejected) == ("snapshot", "")
    reference = await started(index_snapshot_changes=0)  # no snapshots: built from the rows
    assert reference.sync.started_from == "rebuilt"
    assert_same(await ranking(b), await ranking(reference))
    assert_same(await ranking(a), await ranking(reference))
    assert await b.knowledge.search("花呗", limit=3)  # the replayed addition
    assert all(doc != ids[4] for hits in await ranking(b) for doc, _ in hits)  # the replayed removal


def _truncated(blob: bytes) -> dict[str, Any]:
    return signed(blob[: len(blob) // 2])


def _altered(blob: bytes) -> dict[str, Any]:
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0xFF
    return {"data": bytes(flipped)}  # the stored checksum no longer matches


def _version(blob: bytes) -> dict[str, Any]:
    return signed(npz(**{**members(blob), "version": np.array([snapshot.FORMAT_VERSION + 1], dtype="<i8")}))


def _row_version(blob: bytes) -> dict[str, Any]:
    return {"version": snapshot.FORMAT_VERSION + 1}


def _analyzer(blob: bytes) -> dict[str, Any]:
    return signed(npz(**{**members(blob), "analyzer": np.frombuffer(b"another analyzer", dtype="u1")}))


def _shapes(blob: bytes) -> dict[str, Any]:
    arrays = members(blob)
    return signed(npz(**{**arrays, "unit_w": arrays["unit_w"][:-1]}))


def _term_range(blob: bytes) -> dict[str, Any]:
    arrays = members(blob)
    flat_t = arrays["flat_t"].copy()
    flat_t[0] = len(arrays["term_len"]) + 5
    return signed(npz(**{**arrays, "flat_t": flat_t}))


def _pickle(marker: Path) -> Callable[[bytes], dict[str, Any]]:
    def make(blob: bytes) -> dict[str, Any]:
        planted = Planted()
        planted.marker = marker
        return signed(pickle.dumps(planted))

    return make


def _pickle_inside(marker: Path) -> Callable[[bytes], dict[str, Any]]:
    def make(blob: bytes) -> dict[str, Any]:
        planted = Planted()
        planted.marker = marker
        return signed(npz(**{**members(blob), "flat_tf": np.array([planted], dtype=object)}))

    return make


# How each is planted, and what the replica must say of it.
BAD = {
    "truncated": (lambda marker: _truncated, "not an .npz archive"),
    "wrong checksum": (lambda marker: _altered, "checksum mismatch"),
    "wrong version": (lambda marker: _version, "format version"),
    "wrong version column": (lambda marker: _row_version, "format version"),
    "another analyzer": (lambda marker: _analyzer, "another analyzer"),
    "mismatched shapes": (lambda marker: _shapes, "differ in length"),
    "term id out of range": (lambda marker: _term_range, "term id out of range"),
    "a pickle": (_pickle, "not an .npz archive"),
    "a pickle inside the archive": (_pickle_inside, "unreadable"),
}


@pytest.mark.parametrize("kind", list(BAD))
async def test_a_bad_snapshot_is_rebuilt_and_replaced(started, tmp_path: Path, kind: str) -> None:
    a = await started()
    ids = await fill(a)
    assert await a.sync.save_snapshot(force=True)
    await change_after_snapshot(a, ids)
    marker = tmp_path / "pickle-ran"
    make, reason = BAD[kind]
    await plant(a, **make(marker)((await stored(a)).data or b""))

    b = await started()
    assert b.sync.started_from == "rebuilt" and reason in b.sync.snapshot_rejected
    assert not marker.exists()
    assert_same(await ranking(b), await ranking(a))
    # b replaced it: the next replica starts from a good one.
    row = await stored(b)
    assert snapshot.load(row.data or b"", row.checksum) is not None
    c = await started()
    assert c.sync.started_from == "snapshot"
    assert_same(await ranking(c), await ranking(a))


async def test_a_snapshot_whose_log_is_gone_or_from_beyond_the_log_is_rebuilt(started) -> None:
    a = await started()
    ids = await fill(a)
    assert await a.sync.save_snapshot(force=True)
    covered = (await stored(a)).seq
    await change_after_snapshot(a, ids)
    async with a.db.transaction() as db:  # the log trimmed past the snapshot's point
        last = (await db.execute(select(func.max(MemoryChange.seq)))).scalar_one()
        await db.execute(delete(MemoryChange).where(MemoryChange.seq < last))
    b = await started()
    assert b.sync.started_from == "rebuilt" and "gone" in b.sync.snapshot_rejected
    assert_same(await ranking(b), await ranking(a))
    assert (await stored(b)).seq == last > covered

    await plant(a, seq=last + 1000)  # written against another database's log
    c = await started()
    assert c.sync.started_from == "rebuilt" and "past this log" in c.sync.snapshot_rejected
    assert_same(await ranking(c), await ranking(a))


async def test_one_replica_at_a_time_writes_the_snapshot(started) -> None:
    a = await started()
    b = await started()
    await fill(a)
    for replica in (a, b):  # both have read the log to its end: they would write the same snapshot
        await replica.sync.refresh(force=True)
        assert replica.sync._snapshot_task is None  # none in the background (interval not passed)
    assert a.sync._snapshot_point() == b.sync._snapshot_point()
    assert await b.knowledge.search("货到付款", limit=1)
    written = await asyncio.gather(a.sync.save_snapshot(), b.sync.save_snapshot())
    assert sorted(written) == [False, True]  # the other found it current (or the lease taken)
    assert (await stored(a)).entries == len(ENTRIES)

    # A writer whose lease was taken over while it serialised writes nothing.
    async with a.db.transaction() as db:
        assert await snapshots.claim(db, PUBLIC, holder="slow", seq=10**6, min_gain=None, ttl=snapshots_ttl())
    await plant(a, lease="9999-12-31T00:00:00.000000Z quick")
    async with a.db.transaction() as db:
        assert not await snapshots.store(
            db, PUBLIC, holder="slow", version=1, seq=10**6, entries=0, checksum="", data=b""
        )
    assert (await stored(a)).entries == len(ENTRIES)
    async with a.db.transaction() as db:  # and nobody else claims a lease that has not lapsed
        assert not await snapshots.claim(
            db, PUBLIC, holder="third", seq=10**6, min_gain=None, ttl=snapshots_ttl()
        )


def snapshots_ttl() -> timedelta:
    return timedelta(minutes=1)

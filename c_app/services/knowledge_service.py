"""The knowledge base (the public scope): entries written, listed, searched, imported, exported, tested.

The one owner of knowledge-base edits. Every write goes through IndexSync.writing, so this
process's search index changes at once and other processes follow through the memory_changes
log. Imports are written in batches of `import_batch_size` entries, one transaction each.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ..config import Settings
from ..db import memories as repo
from ..db.memories import PUBLIC
from ..db.models import Memory
from ..engines.base import Hit
from ..errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from ..retrieval import DEFAULT_ANSWER_THRESHOLD
from ..schemas.knowledge import KnowledgeEntryIn, KnowledgeEntryPatch, describe_errors
from . import knowledge_formats as formats
from .answer_decision import AnswerDecision, build_decider
from .golden import GateReport, GoldenQuestion, score, trial_decisions
from .index_sync import IndexSync, iter_scope
from .memory_service import hits_for

logger = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_MAX_ERRORS = 1000  # errors listed in a report; `failed` counts them all
ENTRY_NOT_FOUND = "知识条目不存在"
EXTERNAL_ID_TAKEN = "外部ID已存在"

# Import-row keys -> Memory columns.
_PUBLIC_COLUMNS = {
    "title": "title",
    "category": "category",
    "question": "question",
    "similar_questions": "similar_questions",
    "answer": "content",
    "metadata": "meta",
}


def public_fields(entry: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Column values of a knowledge-base entry given as an import row; partial: only the keys present."""
    if "answer" not in entry and "content" in entry:
        entry = {**entry, "answer": entry["content"]}
    out: dict[str, Any] = {}
    for key, column in _PUBLIC_COLUMNS.items():
        if partial and key not in entry:
            continue
        value = entry.get(key)
        if column == "similar_questions":
            out[column] = list(value or [])
        elif column == "meta":
            out[column] = dict(value or {})
        else:
            out[column] = value or ""
    return out


def answer_threshold(settings: Settings) -> float:
    """The score above which the knowledge-base responder answers directly (ANSWER_THRESHOLD, else
    the retrieval library's measured default)."""
    return settings.answer_threshold if settings.answer_threshold is not None else DEFAULT_ANSWER_THRESHOLD


class ReadableUpload(Protocol):
    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


@dataclass(slots=True)
class ImportReport:
    created: int = 0
    updated: int = 0
    failed: int = 0
    deleted: int = 0  # chunks of a re-imported Markdown document that it no longer has
    errors: list[dict[str, Any]] = field(default_factory=list)
    rejected: bool = False  # strict mode found bad rows, so nothing was written
    seconds: float = 0.0
    gate: GateReport | None = None  # the golden-question gate, when the import was gated

    @property
    def gated(self) -> bool:
        """The gate refused the import: nothing was written."""
        return self.gate is not None and not self.gate.passed

    @property
    def imported(self) -> int:
        return self.created + self.updated

    @property
    def rate(self) -> float:
        """Entries written per second."""
        return self.imported / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "failed": self.failed,
            "deleted": self.deleted,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "entries_per_second": round(self.rate, 1),
            **({"gate": self.gate.as_dict()} if self.gate is not None else {}),
        }


class KnowledgeService:
    def __init__(self, sync: IndexSync, settings: Settings) -> None:
        self.sync = sync
        self.db = sync.db
        self.settings = settings
        self.answer_threshold = answer_threshold(settings)
        # The golden gate measures the decision model (the chat's, unless ANSWER_THRESHOLD brings back
        # the score rule: then still the shipped model).
        self.decider = build_decider(settings) or AnswerDecision()
        # Reading an import file (decode, parse, validate) is CPU work in proportion to the file:
        # in a worker thread, one import at a time (see IndexSync on threads and the GIL).
        self._import_limiter = anyio.CapacityLimiter(1)

    # -- single entries -------------------------------------------------------------------------

    async def list_entries(
        self, *, page: int, page_size: int, category: str | None = None, text: str | None = None
    ) -> tuple[list[Memory], int]:
        """One page of the knowledge base in id order, and how many entries match in all."""
        async with self.db.read() as db:
            return await repo.page(
                db,
                scope=PUBLIC,
                owner_id="",
                offset=(page - 1) * page_size,
                limit=page_size,
                category=category,
                text=text or None,
            )

    async def get(self, entry_id: int) -> Memory:
        async with self.db.read() as db:
            return await self._row(db, entry_id)

    async def create(self, entry: KnowledgeEntryIn) -> Memory:
        """Add one entry; Conflict when its external_id is taken."""
        fields = public_fields(entry.model_dump())
        try:
            async with self.sync.writing() as db:
                await self._check_external_id(db, entry.external_id)
                row = await repo.add(db, scope=PUBLIC, owner_id="", external_id=entry.external_id, **fields)
        except IntegrityError as exc:  # a concurrent writer took the external_id first
            raise Conflict(EXTERNAL_ID_TAKEN) from exc
        self.sync.applied([row])
        return row

    async def update(self, entry_id: int, patch: KnowledgeEntryPatch) -> Memory:
        """Change the fields sent; the entry they make must still be valid."""
        sent = patch.model_dump(exclude_unset=True)
        current = formats.export_row(await self.get(entry_id))
        try:
            merged = KnowledgeEntryIn.model_validate({**current, **sent})
        except ValidationError as exc:
            raise BadRequest(describe_errors(exc)) from exc
        changes = {key: getattr(merged, key) for key in sent}
        try:
            async with self.sync.writing() as db:
                row = await self._row(db, entry_id)
                if "external_id" in changes and (changes["external_id"] or None) != row.external_id:
                    await self._check_external_id(db, changes["external_id"])
                    row.external_id = changes["external_id"] or None
                for key, value in public_fields(changes, partial=True).items():
                    setattr(row, key, value)
                await repo.touch(db, row)
        except IntegrityError as exc:
            raise Conflict(EXTERNAL_ID_TAKEN) from exc
        self.sync.applied([row])
        return row

    async def delete(self, entry_id: int) -> None:
        async with self.sync.writing() as db:
            row = await self._row(db, entry_id)
            await repo.remove(db, row)
        self.sync.applied([], [row])

    async def _check_external_id(self, db: AsyncSession, external_id: str | None) -> None:
        if external_id and await repo.by_external_ids(db, [external_id], scope=PUBLIC, owner_id=""):
            raise Conflict(EXTERNAL_ID_TAKEN)

    @staticmethod
    async def _row(db: AsyncSession, entry_id: int) -> Memory:
        row = await repo.get(db, entry_id, scope=PUBLIC, owner_id="")
        if row is None:
            raise NotFound(ENTRY_NOT_FOUND)
        return row

    # -- bulk writes ----------------------------------------------------------------------------

    async def upsert(self, entries: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert or update entries (import rows, matched on external_id) in one transaction.

        Returns (created, updated). A later entry with the same external_id as an earlier one in
        the same call updates it.
        """
        new: list[dict[str, Any]] = []
        new_by_ext: dict[str, dict[str, Any]] = {}
        updated: dict[int, Memory] = {}
        repeats = 0
        async with self.sync.writing() as db:
            ext_ids = [e["external_id"] for e in entries if e.get("external_id")]
            existing = await repo.by_external_ids(db, ext_ids, scope=PUBLIC, owner_id="")
            for entry in entries:
                fields = public_fields(entry)
                ext_id = entry.get("external_id") or None
                row = existing.get(ext_id or "")
                if row is not None:
                    for key, value in fields.items():
                        setattr(row, key, value)
                    updated[row.id] = row
                elif ext_id is not None and ext_id in new_by_ext:
                    new_by_ext[ext_id].update(fields)
                    repeats += 1
                else:
                    fields["external_id"] = ext_id
                    new.append(fields)
                    if ext_id is not None:
                        new_by_ext[ext_id] = fields
            created = await repo.add_many(db, new, scope=PUBLIC, owner_id="") if new else []
            if updated:
                await repo.touch_many(db, list(updated.values()))
        await self.sync.apply([*created, *updated.values()])
        return len(created), len(updated) + repeats

    async def prune(self, external_prefix: str, keep: set[str]) -> int:
        """Delete entries whose external_id starts with the prefix and is not kept (a re-imported
        document's chunks that no longer exist). Returns how many were deleted."""
        async with self.sync.writing() as db:
            rows = await repo.with_external_prefix(db, external_prefix, scope=PUBLIC, owner_id="")
            stale = [row for row in rows if row.external_id not in keep]
            for row in stale:
                await repo.remove(db, row)
        await self.sync.apply([], stale)
        return len(stale)

    # -- import ---------------------------------------------------------------------------------

    async def read_upload(self, upload: ReadableUpload) -> bytes:
        """The uploaded file's bytes, refused as soon as they pass MAX_IMPORT_BYTES."""
        limit = self.settings.max_import_bytes
        chunks: list[bytes] = []
        size = 0
        while chunk := await upload.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"导入文件过大（最大 {limit // (1024 * 1024) or 1} MB）")
            chunks.append(chunk)
        return b"".join(chunks)

    async def import_bytes(
        self,
        data: bytes,
        *,
        filename: str | None,
        fmt: str | None = None,
        strict: bool = False,
        progress: Callable[[int, int], None] | None = None,
        golden: list[GoldenQuestion] | None = None,
        min_right: float = 0.0,
    ) -> ImportReport:
        """Import a file's content. fmt None: from the file name's extension. With `golden`, the
        import is written only if the knowledge base it would leave still answers at least
        `min_right` of the golden questions right (report.gate; report.gated: refused)."""
        fmt = self.resolve_format(fmt, filename)
        document = posixpath.basename((filename or "").replace("\\", "/")) or "document.md"

        def rows() -> Iterator[formats.RawRow]:
            # Decoded and parsed as import_rows reads it, in its worker thread.
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise BadRequest("文件不是 UTF-8 编码") from exc
            yield from formats.parse(text, fmt, document=document)

        return await self.import_rows(
            rows(),
            strict=strict,
            progress=progress,
            document=document if fmt == "markdown" else None,
            golden=golden,
            min_right=min_right,
        )

    @staticmethod
    def resolve_format(fmt: str | None, filename: str | None) -> str:
        fmt = (fmt or "").strip().lower() or formats.infer_format(filename)
        if fmt is None:
            raise BadRequest("无法从文件名判断格式，请指定 format（jsonl、csv 或 markdown）")
        if fmt in ("md", "json", "ndjson"):
            fmt = "markdown" if fmt == "md" else "jsonl"
        if fmt not in formats.FORMATS:
            raise BadRequest("不支持的格式，可选：jsonl、csv、markdown")
        return fmt

    async def import_rows(
        self,
        rows: Iterable[formats.RawRow],
        *,
        strict: bool = False,
        progress: Callable[[int, int], None] | None = None,
        document: str | None = None,
        golden: list[GoldenQuestion] | None = None,
        min_right: float = 0.0,
    ) -> ImportReport:
        """Validate every row, then write the valid ones in batches (none at all if strict and any is bad).

        The rows are read and validated in a worker thread (`rows` may be a parser's generator)."""
        started = time.perf_counter()
        report = ImportReport()
        entries: list[dict[str, Any]] = []
        seen_external: set[str] = set()

        def validate() -> None:
            for raw in rows:
                if raw.data and isinstance(raw.data.get("external_id"), str):
                    seen_external.add(raw.data["external_id"])
                error = raw.error
                if error is None:
                    try:
                        entries.append(KnowledgeEntryIn.model_validate(raw.data).model_dump())
                    except ValidationError as exc:
                        error = describe_errors(exc)
                if error is not None:
                    report.failed += 1
                    if len(report.errors) < _MAX_ERRORS:
                        report.errors.append({"line": raw.line, "error": error})

        await anyio.to_thread.run_sync(validate, limiter=self._import_limiter)
        if strict and report.failed:
            report.rejected = True
            report.seconds = time.perf_counter() - started
            return report
        if golden is not None:
            report.gate = await self.trial_golden(entries, golden, min_right=min_right)
            if report.gated:
                report.seconds = time.perf_counter() - started
                return report
        batch = self.settings.import_batch_size
        for start in range(0, len(entries), batch):
            part = entries[start : start + batch]
            created, updated = await self.upsert(part)
            report.created += created
            report.updated += updated
            if progress is not None:
                progress(len(part), len(entries))
        if document is not None:
            # The document was imported whole: its chunks that no longer exist go.
            report.deleted = await self.prune(formats.external_prefix(document), seen_external)
        report.seconds = time.perf_counter() - started
        logger.info(
            "knowledge import: %d created, %d updated, %d failed, %d removed in %.2fs",
            report.created,
            report.updated,
            report.failed,
            report.deleted,
            report.seconds,
        )
        return report

    # -- golden questions -----------------------------------------------------------------------

    async def evaluate_golden(self, golden: list[GoldenQuestion], *, min_right: float) -> GateReport:
        """Run the golden questions against the live knowledge base, each decided as a chat turn."""
        decisions = []
        for item in golden:
            hits = await self.search(item.question, limit=5)
            async with self.db.read() as db:
                rows = await repo.get_many(db, [hit.id for hit in hits])
            external = {doc: row.external_id for doc, row in rows.items()}
            decisions.append((self.decider.decide(item.question, hits), external))
        return score(golden, decisions, min_right=min_right)

    async def trial_golden(
        self, entries: list[dict[str, Any]], golden: list[GoldenQuestion], *, min_right: float
    ) -> GateReport:
        """The gate on the knowledge base that writing `entries` (validated import rows, matched on
        external_id) would leave, built aside: nothing is written."""
        merged: dict[str, dict[str, Any]] = {}
        async for rows in iter_scope(self.db, scope=PUBLIC, owner_id=""):
            for row in rows:
                merged[row.external_id or f"#{row.id}"] = {"id": row.id, **formats.export_row(row)}
        fresh = -1
        for entry in entries:
            key = entry.get("external_id") or f"new{fresh}"
            previous = merged.get(key)
            merged[key] = {**entry, "id": previous["id"] if previous else fresh}
            fresh -= 1
        decisions = await anyio.to_thread.run_sync(
            trial_decisions, list(merged.values()), golden, self.decider, limiter=self._import_limiter
        )
        return score(golden, decisions, min_right=min_right)

    # -- export ---------------------------------------------------------------------------------

    def export(self, fmt: str) -> AsyncIterator[str]:
        """The whole knowledge base in an import format, produced batch by batch."""
        fmt = (fmt or "jsonl").lower()
        if fmt not in formats.EXPORT_FORMATS:
            raise BadRequest("不支持的导出格式，可选：jsonl、csv")
        return self._export(fmt)

    async def _export(self, fmt: str) -> AsyncIterator[str]:
        if fmt == "csv":
            yield formats.csv_header()
        render = formats.csv_lines if fmt == "csv" else formats.jsonl_lines
        async for rows in iter_scope(self.db, scope=PUBLIC, owner_id=""):
            yield render(rows)

    # -- hit test -------------------------------------------------------------------------------

    async def search(self, query: str, *, limit: int) -> list[Hit]:
        """The knowledge base's best `limit` hits, best first."""
        await self.sync.refresh()
        ranked = [(PUBLIC, doc, score) for doc, score in await self.sync.public_hits(query, limit)]
        async with self.db.read() as db:
            return await hits_for(db, ranked)

    async def hit_test(self, query: str, *, limit: int) -> dict[str, Any]:
        """Why an entry is (or is not) found: the analysed query, the ranked hits, and the verdict."""
        hits = await self.search(query, limit=limit)
        threshold = self.answer_threshold
        # What a chat turn would do: the decision model's verdict (the score rule when ANSWER_THRESHOLD is set).
        decision = self.decider.decide(query, hits)
        if self.settings.answer_threshold is None:
            answered = decision.outcome == "answer"
        else:
            answered = bool(hits) and hits[0].score >= threshold
        async with self.db.read() as db:
            rows = await repo.get_many(db, [hit.id for hit in hits])
        return {
            "query": query,
            **self.sync.explain(query),
            "threshold": threshold,
            "answered": answered,
            "answer_id": (decision.entries[0].id if decision.outcome == "answer" else hits[0].id)
            if answered
            else None,
            "decision": decision.outcome,
            "confidence": round(decision.confidence, 4),
            "choice_ids": [hit.id for hit in decision.entries] if decision.outcome == "clarify" else [],
            "hits": [
                {
                    "id": hit.id,
                    "external_id": rows[hit.id].external_id if hit.id in rows else None,
                    "question": hit.question,
                    "title": hit.title,
                    "category": hit.category,
                    "score": round(hit.score, 4),
                    "above_threshold": hit.score >= threshold,
                }
                for hit in hits
            ],
        }

"""Knowledge-base management: entries of the public scope written, listed, imported, exported, tested.

Every write goes through MemoryService, so this process's search index changes at once and other
processes follow through the memory_changes log. Imports are written in batches of
`import_batch_size` entries, one transaction each.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from ..config import Settings
from ..db.models import Memory
from ..errors import BadRequest, PayloadTooLarge
from ..schemas.knowledge import KnowledgeEntryIn, KnowledgeEntryPatch, describe_errors
from . import knowledge_formats as formats
from .memory_service import MemoryService

logger = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_MAX_ERRORS = 1000  # errors listed in a report; `failed` counts them all


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
        }


class KnowledgeService:
    def __init__(self, memory: MemoryService, settings: Settings) -> None:
        self.memory = memory
        self.settings = settings

    # -- single entries -------------------------------------------------------------------------

    async def list_entries(
        self, *, page: int, page_size: int, category: str | None = None, text: str | None = None
    ) -> tuple[list[Memory], int]:
        return await self.memory.list_public(
            offset=(page - 1) * page_size, limit=page_size, category=category, text=text or None
        )

    async def get(self, entry_id: int) -> Memory:
        return await self.memory.get_public(entry_id)

    async def create(self, entry: KnowledgeEntryIn) -> Memory:
        return await self.memory.create_public(entry.model_dump())

    async def update(self, entry_id: int, patch: KnowledgeEntryPatch) -> Memory:
        """Change the fields sent; the entry they make must still be valid."""
        changes = patch.model_dump(exclude_unset=True)
        current = formats.export_row(await self.memory.get_public(entry_id))
        try:
            merged = KnowledgeEntryIn.model_validate({**current, **changes})
        except ValidationError as exc:
            raise BadRequest(describe_errors(exc)) from exc
        return await self.memory.update_public(entry_id, {key: getattr(merged, key) for key in changes})

    async def delete(self, entry_id: int) -> None:
        await self.memory.delete_public(entry_id)

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
    ) -> ImportReport:
        """Import a file's content. fmt None: from the file name's extension."""
        fmt = self.resolve_format(fmt, filename)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadRequest("文件不是 UTF-8 编码") from exc
        document = posixpath.basename((filename or "").replace("\\", "/")) or "document.md"
        return await self.import_rows(
            formats.parse(text, fmt, document=document),
            strict=strict,
            progress=progress,
            document=document if fmt == "markdown" else None,
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
    ) -> ImportReport:
        """Validate every row, then write the valid ones in batches (none at all if strict and any is bad)."""
        started = time.perf_counter()
        report = ImportReport()
        entries: list[dict[str, Any]] = []
        seen_external: set[str] = set()
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
        if strict and report.failed:
            report.rejected = True
            report.seconds = time.perf_counter() - started
            return report
        batch = self.settings.import_batch_size
        for start in range(0, len(entries), batch):
            part = entries[start : start + batch]
            created, updated = await self.memory.upsert_public(part)
            report.created += created
            report.updated += updated
            if progress is not None:
                progress(len(part), len(entries))
        if document is not None:
            # The document was imported whole: its chunks that no longer exist go.
            report.deleted = await self.memory.prune_public(formats.external_prefix(document), seen_external)
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
        async for rows in self.memory.iter_public():
            yield render(rows)

    # -- hit test -------------------------------------------------------------------------------

    async def hit_test(self, query: str, *, limit: int) -> dict[str, Any]:
        """Why an entry is (or is not) found: the analysed query, the ranked hits, and the verdict."""
        hits = await self.memory.search_public(query, limit=limit)
        threshold = self.memory.answer_threshold
        answered = bool(hits) and hits[0].score >= threshold
        return {
            "query": query,
            **self.memory.explain(query),
            "threshold": threshold,
            "answered": answered,
            "answer_id": hits[0].memory.id if answered else None,
            "hits": [
                {
                    "id": hit.memory.id,
                    "external_id": hit.memory.external_id,
                    "question": hit.memory.question,
                    "title": hit.memory.title,
                    "category": hit.memory.category,
                    "score": round(hit.score, 4),
                    "above_threshold": hit.score >= threshold,
                }
                for hit in hits
            ],
        }

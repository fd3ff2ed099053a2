"""Start-up: bring the schema to the newest revision and load the sample knowledge base once."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from ..config import Settings
from ..db import memories as memories_repo
from ..db import meta
from ..db.engine import Database
from ..db.migrate import upgrade
from ..services.memory_service import MemoryService

logger = logging.getLogger(__name__)

SAMPLE_KB = Path(__file__).resolve().parent.parent / "data" / "sample_kb.jsonl"
_LOADED_KEY = "sample_kb_loaded"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


async def init_memory_database(settings: Settings, db: Database, memory: MemoryService) -> None:
    """Migrate, build the search index, and load the bundled knowledge base on first start."""
    await upgrade(db.engine)
    await memory.start()
    if not settings.load_sample_kb:
        return
    async with db.read() as session:
        if await meta.get(session, _LOADED_KEY):
            return
        # An operator's own knowledge base (imported before the first start) is not mixed with the sample.
        if await memories_repo.count(session, scope=memories_repo.PUBLIC):
            await meta.put(session, _LOADED_KEY, "skipped: knowledge base not empty")
            await session.commit()
            return
    path = Path(settings.sample_kb_path) if settings.sample_kb_path else SAMPLE_KB
    entries = read_jsonl(path)
    try:
        # Matched on external_id, so a second loader (another replica starting at once) duplicates nothing.
        created, updated = await memory.upsert_public(entries)
        async with db.transaction() as session:
            await meta.put(session, _LOADED_KEY, str(len(entries)))
    except IntegrityError:
        logger.info("sample knowledge base loaded by another process")
        await memory.refresh(force=True)
        return
    logger.info("sample knowledge base loaded: %d new, %d updated", created, updated)

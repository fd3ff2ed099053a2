"""The services, built in one place for the app, the CLI and the benches.

services = build_services(settings, db)
await services.start()        # migrate, build the index, load the sample knowledge base
...
await services.aclose()       # background work, the model client, the database
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
from openai import AsyncOpenAI
from sqlalchemy.exc import IntegrityError

from .config import Settings
from .db import agents as agents_repo
from .db import memories as memories_repo
from .db import meta
from .db.engine import Database
from .db.migrate import upgrade
from .engines.base import Engine
from .engines.fallback import FallbackEngine
from .engines.kb_responder import KnowledgeBaseResponder
from .engines.llm_responder import LLMResponder
from .observability.metrics import HANDOFF_QUEUE, INDEX_LAG, GaugeSampler, pool_gauges
from .observability.model import MeteredModel
from .privacy.masking import MaskingEngine
from .privacy.sensitive import SensitiveWords
from .retrieval.dense import EmbeddingClient
from .retrieval.text import set_cache_dir
from .services.agent_service import AgentService
from .services.answer_decision import build_decider
from .services.audit_service import AuditService
from .services.bus import EventBus, build_bus
from .services.canned_service import CannedReplyService
from .services.chat_service import ChatService
from .services.console_service import ConsoleService
from .services.customer_data import CustomerDataService
from .services.dense_search import DenseSearch
from .services.index_sync import IndexSync
from .services.jobs import JobService
from .services.knowledge_service import KnowledgeService, answer_threshold
from .services.live import LiveEvents
from .services.memory_service import MemoryService
from .services.retention import RetentionService
from .services.session_service import SessionService
from .services.stops import StopSignals
from .services.ticket_service import TicketService
from .services.upload_service import UploadService

logger = logging.getLogger(__name__)

SAMPLE_KB = Path(__file__).resolve().parent / "data" / "sample_kb.jsonl"
_SAMPLE_LOADED_KEY = "sample_kb_loaded"


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    sync: IndexSync
    sessions: SessionService
    memory: MemoryService
    knowledge: KnowledgeService
    uploads: UploadService
    chat: ChatService
    audit: AuditService
    customer_data: CustomerDataService
    retention: RetentionService
    console: ConsoleService
    tickets: TicketService  # 留言 (issue 10)
    canned: CannedReplyService  # 快捷回复 (issue 10)
    bus: EventBus  # issue 10: live events, stops across replicas (services/bus.py)
    live: LiveEvents
    agents: AgentService
    stops: StopSignals
    # Gauges sampled for /metrics: register a function at start-up (`gauges.register(HANDOFF_QUEUE, fn)`).
    jobs: JobService
    gauges: GaugeSampler = field(default_factory=GaugeSampler)

    async def start(self, *, index: bool = True, sample_kb: bool = True) -> None:
        """Bring the schema to the newest revision, build the search index (a one-shot CLI import
        needs none), and load the bundled knowledge base on the first start (LOAD_SAMPLE_KB)."""
        await upgrade(self.db.engine)
        await self.stops.start()  # other replicas' stop requests reach this one's turns
        if index:
            await self.sync.start()
        if sample_kb and self.settings.load_sample_kb:
            await self._load_sample()
        # Background jobs, the periodic purge among them (run by one replica at a time); a one-shot
        # CLI command only submits.
        await self.jobs.start(worker=index, retention=self.retention if index else None)
        if index:
            self.gauges.start()  # several worker processes: sampled in the background too

    async def aclose(self) -> None:
        await self.jobs.stop()
        await self.gauges.stop()
        await self.retention.stop()
        await self.stops.stop()
        await self.bus.aclose()
        await self.chat.engine.aclose()
        await self.sync.stop()
        await self.db.dispose()

    async def _load_sample(self) -> None:
        async with self.db.read() as session:
            if await meta.get(session, _SAMPLE_LOADED_KEY):
                return
            # An operator's own knowledge base (imported before the first start) is not mixed with the sample.
            if await memories_repo.count(session, scope=memories_repo.PUBLIC):
                await meta.put(session, _SAMPLE_LOADED_KEY, "skipped: knowledge base not empty")
                await session.commit()
                return
        path = Path(self.settings.sample_kb_path) if self.settings.sample_kb_path else SAMPLE_KB
        entries = read_jsonl(path)
        try:
            # Matched on external_id, so a second loader (another replica starting at once) duplicates nothing.
            created, updated = await self.knowledge.upsert(entries)
            async with self.db.transaction() as session:
                await meta.put(session, _SAMPLE_LOADED_KEY, str(len(entries)))
        except IntegrityError:
            logger.info("sample knowledge base loaded by another process")
            await self.sync.refresh(force=True)
            return
        logger.info("sample knowledge base loaded: %d new, %d updated", created, updated)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def build_engine(settings: Settings) -> Engine:
    """The knowledge-base responder, or the model with the knowledge base as its fallback."""
    kb = KnowledgeBaseResponder(
        threshold=answer_threshold(settings),
        memory_threshold=settings.memory_answer_threshold,
        company=settings.company_name,
        margin=settings.answer_margin,
    )
    if settings.llm_api_key is None:
        return kb
    client = AsyncOpenAI(
        api_key=settings.llm_api_key.get_secret_value(),
        base_url=settings.llm_base_url,
        # The SDK's own Timeout type (httpx's in openai 1.x, its httpx2 fork's in 3.x).
        timeout=openai.Timeout(settings.llm_timeout, connect=min(settings.llm_timeout, 10.0)),
        max_retries=settings.llm_max_retries,
    )
    llm = LLMResponder(
        client=client,
        model=settings.llm_model,
        company=settings.company_name,
        history_budget=settings.llm_history_tokens,
        max_tool_rounds=settings.llm_max_tool_rounds,
        temperature=settings.llm_temperature,
        max_tokens=settings.llm_max_tokens,
    )
    metered = MeteredModel(
        llm, model=settings.llm_model
    )  # tokens and failures, before the fallback hides them
    # Personal data never reaches the model (the offline responder sends nothing out: not masked).
    primary: Engine = MaskingEngine(metered) if settings.pii_masking else metered
    return FallbackEngine(primary, kb)


def build_dense(settings: Settings, db: Database) -> DenseSearch | None:
    """Dense retrieval over the knowledge base, when an embeddings endpoint is configured."""
    if not settings.embedding_base_url:
        return None
    client = EmbeddingClient(
        base_url=settings.embedding_base_url,
        model=settings.embedding_model,
        api_key=settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else None,
        timeout=settings.embedding_timeout,
        batch_size=settings.embedding_batch_size,
    )
    return DenseSearch(db, settings, client)


def build_sensitive(settings: Settings) -> SensitiveWords | None:
    """The sensitive-word list (SENSITIVE_WORDS_FILE), re-read when it changes; None: no checks at all."""
    if not settings.sensitive_words_file:
        return None
    return SensitiveWords(
        settings.sensitive_words_file,
        reload_interval=settings.sensitive_reload_interval,
        mask=settings.sensitive_mask_char,
    )


def build_services(settings: Settings, db: Database | None = None) -> Services:
    set_cache_dir(settings.cache_path)  # jieba's and the term statistics' cache: private, not the temp dir
    db = db or Database(settings)
    sync = IndexSync(db, settings, dense=build_dense(settings, db))
    sessions = SessionService(db)
    memory = MemoryService(sync, settings)
    uploads = UploadService(db, settings)
    sends_images = settings.llm_api_key is not None and settings.llm_send_images
    chat = ChatService(
        settings,
        sessions,
        memory,
        uploads,
        build_engine(settings),
        sends_images=sends_images,
        sensitive=build_sensitive(settings),
        decider=build_decider(settings),
    )
    audit = AuditService(db)
    knowledge = KnowledgeService(sync, settings)
    tickets = TicketService(db, audit)
    bus = build_bus(settings)
    live = LiveEvents(db, bus, ttl=timedelta(hours=settings.live_event_ttl_hours))
    agents = AgentService(db, settings, sessions, live, audit, tickets)
    stops = StopSignals(db, bus, chat.interrupt)
    chat.agents = agents
    chat.stops = stops
    gauges = GaugeSampler(multiprocess_dir=settings.prometheus_multiproc_dir)
    gauges.register(INDEX_LAG, sync.lag)

    async def handoff_queue_length() -> int:
        async with db.read() as session:
            return await agents_repo.queue_length(session)

    gauges.register(HANDOFF_QUEUE, handoff_queue_length)
    pool_gauges(gauges, db.engine.pool)
    retention = RetentionService(sync, uploads, settings)
    return Services(
        settings=settings,
        db=db,
        sync=sync,
        sessions=sessions,
        memory=memory,
        knowledge=knowledge,
        uploads=uploads,
        chat=chat,
        audit=audit,
        customer_data=CustomerDataService(sync, uploads, audit),
        retention=retention,
        console=ConsoleService(db, knowledge),
        tickets=tickets,
        canned=CannedReplyService(db),
        bus=bus,
        live=live,
        agents=agents,
        stops=stops,
        gauges=gauges,
        jobs=JobService(db, settings, knowledge, sync.dense),
    )

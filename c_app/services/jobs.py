"""Background jobs: work that must survive a restart, or run once per fleet.

What runs here: large knowledge-base imports submitted through the admin API (a client polls the
job's row in `background_jobs`: queued, running, succeeded, failed) and, on PostgreSQL, the
retention purge as a periodic job.

On PostgreSQL the engine is procrastinate (its queue in the same database, schema applied by
revision 0013): every replica runs a worker inside its process (JOBS_WORKER), a job is taken by one
worker (FOR UPDATE SKIP LOCKED), a periodic job is deferred once per period for the whole fleet
(procrastinate_periodic_defers is unique per task and timestamp) and holds a queueing lock so runs
never pile up; a job whose worker died (no heartbeat for JOBS_STALLED_AFTER_SECONDS) is retried by a
periodic recovery job on another replica. A job accepted by a process that is then killed is still
in the queue and taken by the next worker.

On SQLite (one process by design) an in-process runner takes the same rows: jobs queued or running
when the process stopped are run again at start, one at a time; the retention purge keeps its own
loop (RetentionService.start), which already takes the database lease. Nothing extra to run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..db import jobs as repo
from ..db.engine import Database
from ..db.models import BackgroundJob, utcnow
from ..errors import AppError, NotFound
from .dense_search import DenseSearch
from .knowledge_service import KnowledgeService
from .retention import RetentionService

if TYPE_CHECKING:
    from procrastinate import App

logger = logging.getLogger(__name__)

IMPORT = "knowledge.import"
MAX_ATTEMPTS = 3  # a job failing on something other than its input (the database went away...)
NOT_FOUND = "任务不存在"
_QUEUE = "c_app"
JOB_HISTORY_HOURS = 24  # finished jobs of procrastinate's queue kept this long (ours: background_jobs)


def interval_cron(seconds: float) -> str:
    """RETENTION_INTERVAL_SECONDS as the nearest cron step (croniter: a 6th field is seconds)."""
    whole = max(1, round(seconds))
    if whole < 60:
        return f"* * * * * */{whole}"
    if whole < 3600:
        return f"*/{max(1, round(whole / 60))} * * * *"
    if whole < 86400:
        return f"0 */{max(1, round(whole / 3600))} * * *"
    return f"0 0 */{max(1, round(whole / 86400))} * *"


def libpq_url(url: str) -> str:
    """DATABASE_URL as psycopg takes it (no SQLAlchemy driver suffix)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}://{rest}"


class JobService:
    def __init__(
        self, db: Database, settings: Settings, knowledge: KnowledgeService, dense: DenseSearch | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.knowledge = knowledge
        self.dense = dense
        self.retention: RetentionService | None = None
        self.app: App | None = None
        self._worker: asyncio.Task[None] | None = None
        self._local: asyncio.Queue[str] = asyncio.Queue()
        self._local_task: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, worker: bool = True, retention: RetentionService | None = None) -> None:
        """Open the queue; with `worker` (and JOBS_WORKER), run jobs in this process too, and the
        retention purge (when given and RETENTION_DAYS is set) periodically."""
        self.retention = retention
        if self.settings.is_sqlite:
            if worker and self.settings.jobs_worker:
                async with self.db.read() as db:
                    for job_id in await repo.unfinished_ids(db):
                        self._local.put_nowait(job_id)
                self._local_task = asyncio.create_task(self._run_local(), name="jobs")
                if retention is not None:
                    retention.start()  # its own loop, under the database lease
            return
        self.app = self._build_app()
        await self.app.open_async()
        if self.dense is not None and self.dense.backlog:
            await self._defer_backfill()
        if worker and self.settings.jobs_worker:
            stalled = self.settings.jobs_stalled_after_seconds
            self._worker = asyncio.create_task(
                self.app.run_worker_async(
                    queues=[_QUEUE],
                    concurrency=self.settings.jobs_concurrency,
                    install_signal_handlers=False,
                    update_heartbeat_interval=max(0.2, stalled / 3),
                    stalled_worker_timeout=stalled,
                    fetch_job_polling_interval=min(5.0, stalled),
                    shutdown_graceful_timeout=5.0,
                ),
                name="jobs-worker",
            )

    async def stop(self) -> None:
        if self.retention is not None:
            await self.retention.stop()
        for task in (self._local_task, self._worker):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # the database went away: stopping must still finish
                    logger.warning("background jobs: the worker ended with an error", exc_info=True)
        self._local_task = self._worker = None
        if self.app is not None:
            try:
                await self.app.close_async()
            except Exception:
                logger.warning("background jobs: could not close the job engine's pool", exc_info=True)
            self.app = None

    def _build_app(self) -> App:
        from procrastinate import App, JobContext, PsycopgConnector, RetryStrategy, builtin_tasks

        assert self.settings.database_url is not None
        kwargs: dict[str, Any] = {}
        if self.settings.database_schema:
            kwargs["options"] = f"-c search_path={self.settings.database_schema}"
        connector = PsycopgConnector(
            conninfo=libpq_url(self.settings.database_url), kwargs=kwargs, min_size=1, max_size=4
        )
        app = App(connector=connector)
        retry = RetryStrategy(max_attempts=MAX_ATTEMPTS - 1, wait=2)

        async def run_job(job_id: str) -> None:
            await self.run(job_id)

        app.task(name="c_app.run_job", queue=_QUEUE, retry=retry)(run_job)

        purge = self.retention

        async def retention(timestamp: int) -> None:
            if purge is not None and purge.enabled:
                await purge.run_once()  # still under its own lock (a manual run may be going on)

        task = app.task(name="c_app.retention", queue=_QUEUE, queueing_lock="c_app.retention")(retention)
        if purge is not None and purge.enabled:
            app.periodic(cron=interval_cron(self.settings.retention_interval_seconds), periodic_id="")(task)

        dense = self.dense

        async def dense_backfill() -> None:
            if dense is None:  # a replica without EMBEDDING_BASE_URL: left to one that has it
                raise RuntimeError("no embeddings endpoint configured on this replica")
            await dense.backfill()

        # Registered on every replica (a worker meeting a task it does not know fails the job).
        app.task(
            name="c_app.dense_backfill",
            queue=_QUEUE,
            queueing_lock="c_app.dense_backfill",  # one waiting in the queue at most
            lock="c_app.dense_backfill",  # and one running: a second one then finds nothing left
            retry=RetryStrategy(max_attempts=20, wait=10),  # the endpoint may be down a while
        )(dense_backfill)
        if dense is not None:
            dense.requeue = self._defer_backfill  # a backlog still there later asks again

        async def recover_stalled(timestamp: int) -> None:
            """Jobs whose worker stopped sending heartbeats (killed, frozen) go back to the queue."""
            manager = app.job_manager
            stale = self.settings.jobs_stalled_after_seconds
            for job in await manager.get_stalled_jobs(seconds_since_heartbeat=stale):
                logger.warning("job %s of a stalled worker is queued again", job.id)
                await manager.retry_job(job)

        recover = app.task(name="c_app.recover_stalled", queue=_QUEUE, queueing_lock="c_app.recover_stalled")(
            recover_stalled
        )
        app.periodic(cron=interval_cron(max(1.0, self.settings.jobs_stalled_after_seconds / 2)))(recover)

        async def remove_old_jobs(context: JobContext, timestamp: int) -> None:
            """procrastinate keeps finished jobs (the recovery job alone adds thousands a day)."""
            await builtin_tasks.remove_old_jobs(context, max_hours=JOB_HISTORY_HOURS, remove_failed=True)

        cleanup = app.task(
            name="c_app.remove_old_jobs",
            queue=_QUEUE,
            queueing_lock="c_app.remove_old_jobs",
            pass_context=True,
        )(remove_old_jobs)
        app.periodic(cron="7 * * * *")(cleanup)
        # Its INFO lines (every job started and ended, the recovery job every few seconds) drown ours.
        procrastinate_logger = logging.getLogger("procrastinate")
        if procrastinate_logger.level == logging.NOTSET:
            procrastinate_logger.setLevel(logging.WARNING)
        return app

    # -- submitting and polling -----------------------------------------------------------------

    async def submit_import(
        self, data: bytes, *, filename: str | None, fmt: str | None, strict: bool
    ) -> BackgroundJob:
        """Queue an import of a knowledge-base file; the format is checked now (400), the rows later."""
        resolved = self.knowledge.resolve_format(fmt, filename)
        params = {"filename": filename, "format": resolved, "strict": strict, "bytes": len(data)}
        row = BackgroundJob(
            id=uuid.uuid4().hex, kind=IMPORT, status=repo.QUEUED, params=params, payload=data, attempts=0
        )
        row.created_at = utcnow()
        async with self.db.transaction() as db:
            await repo.add(db, row)
        await self._enqueue(row.id)
        return row

    async def get(self, job_id: str) -> BackgroundJob:
        async with self.db.read() as db:
            row = await repo.get(db, job_id)
        if row is None:
            raise NotFound(NOT_FOUND)
        return row

    async def _defer_backfill(self) -> None:
        """Queue the fleet's embedding backfill, once: every replica starting with a backlog asks,
        the queueing lock keeps one in the queue."""
        from procrastinate.exceptions import AlreadyEnqueued

        assert self.app is not None
        try:
            await self.app.configure_task("c_app.dense_backfill").defer_async()
        except AlreadyEnqueued:
            return
        logger.info("dense backfill queued for the fleet")

    async def _enqueue(self, job_id: str) -> None:
        if self.app is not None:
            await self.app.configure_task("c_app.run_job").defer_async(job_id=job_id)
        else:
            self._local.put_nowait(job_id)

    # -- running --------------------------------------------------------------------------------

    async def _run_local(self) -> None:
        while True:
            job_id = await self._local.get()
            try:
                await self.run(job_id, last_try=True)
            except Exception:
                logger.exception("job %s failed", job_id)

    async def run(self, job_id: str, *, last_try: bool = False) -> None:
        """Run one job of `background_jobs` (whichever engine took it). A job whose input is refused
        fails at once; any other error is raised for the engine to retry, until MAX_ATTEMPTS."""
        async with self.db.transaction() as db:
            row = await repo.start(db, job_id)
            if row is None:
                return  # unknown, or finished already (a retry of a job that did finish)
            kind, params, payload, attempts = row.kind, dict(row.params), row.payload, row.attempts
        try:
            if kind != IMPORT:
                raise AppError(f"未知任务类型：{kind}")
            report = await self.knowledge.import_bytes(
                payload or b"", filename=params["filename"], fmt=params["format"], strict=params["strict"]
            )
        except AppError as exc:
            await self._finish(job_id, repo.FAILED, None, exc.message)
            return
        except Exception as exc:
            if last_try or attempts >= MAX_ATTEMPTS:
                await self._finish(job_id, repo.FAILED, None, f"任务执行失败：{type(exc).__name__}")
            raise
        result = report.as_dict()
        if report.rejected:
            await self._finish(job_id, repo.FAILED, result, "导入数据有误，未导入任何条目")
        else:
            await self._finish(job_id, repo.SUCCEEDED, result, None)

    async def _finish(
        self, job_id: str, status: str, result: dict[str, Any] | None, error: str | None
    ) -> None:
        async with self.db.transaction() as db:
            await repo.finish(db, job_id, status=status, result=result, error=error)
        logger.info("job %s %s", job_id, status)

"""Service information, health and statistics: answers that are not in the success envelope."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

Health = Literal["healthy", "unhealthy"]


class ServiceInfo(BaseModel):
    """GET /"""

    message: str
    version: str
    status: str
    docs: str
    health: str


class Liveness(BaseModel):
    """GET /health: the process answers."""

    status: str
    service: str


class ReadinessChecks(BaseModel):
    database: Health = "healthy"
    redis: Literal["healthy", "unhealthy", "not_configured"] = "healthy"
    index: Health = "healthy"  # the knowledge-base index is loaded
    draining: bool = False  # SIGTERM received: finishing streams in flight, no new turns


class Readiness(BaseModel):
    """GET /ready: 200 when this replica should get traffic, else 503 (status "not_ready")."""

    status: Literal["ready", "not_ready"]
    replica: str
    checks: ReadinessChecks


class ServiceChecks(BaseModel):
    chat_service: Health = "healthy"
    session_service: Health = "healthy"  # the database answers
    memory_service: Health = "healthy"  # retrieval answers


class HealthResponse(BaseModel):
    """GET /api/v1/chat/health: 200 when every check passes, else 503 with status "degraded"."""

    status: Literal["healthy", "degraded"]
    timestamp: str
    services: ServiceChecks


class Statistics(BaseModel):
    total_sessions: int
    active_sessions: int  # with activity in the last 24 hours
    total_messages: int
    feedback_likes: int
    feedback_dislikes: int
    total_uploads: int
    sensitive_hits: int  # listed sensitive words matched, in questions and answers (every occurrence)
    blocked_messages: int  # customers' messages refused for a sensitive word
    # Human agents (issue 10): handoffs, queue_length, wait_p50/p90_seconds, handling_avg_seconds,
    # csat_average, csat_count, tickets_open, agents_online (GET /api/v1/agent/stats: the same).
    agents: dict[str, Any] | None = None


class StatsResponse(BaseModel):
    timestamp: str
    uptime: float  # seconds since the process started
    version: str
    statistics: Statistics

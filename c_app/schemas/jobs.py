"""Background jobs as the admin API shows them (GET /api/v1/admin/jobs/{job_id})."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str  # knowledge.import
    status: str  # queued, running, succeeded, failed
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any] | None  # an import: the report of POST /knowledge/import (created, updated...)
    error: str | None

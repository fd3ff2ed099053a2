"""Background jobs through the admin API, behind ADMIN_TOKEN.

POST /api/v1/admin/knowledge/import-jobs   a large import, queued: 202 with the job (its id)
GET  /api/v1/admin/jobs/{job_id}           the job's status and, once done, its report

The job is stored before the answer, so it survives a restart of the process that accepted it;
whichever replica's worker is free runs it (c_app/services/jobs.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, UploadFile

from ...schemas.common import Envelope
from ...schemas.jobs import JobOut
from ..deps import ServicesDep
from .admin import AuditorDep, require_admin

router = APIRouter(dependencies=[Depends(require_admin)])

JobId = Annotated[str, Path(min_length=1, max_length=64, description="任务ID")]


@router.post("/knowledge/import-jobs", status_code=202)
async def submit_import_job(
    services: ServicesDep,
    auditor: AuditorDep,
    file: Annotated[UploadFile, File()],
    fmt: Annotated[str | None, Form(alias="format", max_length=16)] = None,
    strict: Annotated[bool, Form()] = False,
) -> Envelope[JobOut]:
    """提交后台导入任务（JSON Lines、CSV 或 Markdown），立即返回任务ID；用 GET /admin/jobs/{job_id} 查询进度与结果。

    适合大文件：导入在后台执行，服务重启后任务仍会完成。格式在提交时检查（400），逐行校验在任务中进行。"""
    data = await services.knowledge.read_upload(file)
    job = await services.jobs.submit_import(data, filename=file.filename, fmt=fmt, strict=strict)
    await auditor.record(
        "knowledge.import_job",
        target_type="job",
        target_id=job.id,
        detail={"bytes": len(data), "strict": strict, "format": job.params["format"]},
    )
    return Envelope[JobOut](message="导入任务已提交", data=JobOut.model_validate(job))


@router.get("/jobs/{job_id}")
async def get_job(job_id: JobId, services: ServicesDep) -> Envelope[JobOut]:
    """查询后台任务的状态（queued、running、succeeded、failed）与结果。"""
    job = await services.jobs.get(job_id)
    return Envelope[JobOut](message="获取成功", data=JobOut.model_validate(job))

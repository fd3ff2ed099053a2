"""Uploaded files: served under /static/uploads and downloadable at /download/{filename}."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .deps import ActorDep, ServicesDep

router = APIRouter()


@router.get("/download/{filename}", tags=["文件"])
async def download_file(filename: str, services: ServicesDep, actor: ActorDep) -> FileResponse:
    """Download an uploaded file as an attachment."""
    upload, path = await services.uploads.get(filename, owner_id=actor.scope)
    return FileResponse(
        path=path,
        filename=upload.original_name or upload.stored_name,
        media_type="application/octet-stream",
    )


def setup_static_files(app: FastAPI, upload_dir: str) -> None:
    # StaticFiles resolves paths and refuses anything that leaves the directory.
    app.mount("/static/uploads", StaticFiles(directory=upload_dir, check_dir=False), name="uploads")
    app.include_router(router)

"""Uploaded files: shown at /static/uploads/{name} and downloadable at /download/{name}.

Only files recorded as uploads are served (a stray file in the folder is not). With auth on, a
file is readable by its owner's credentials, by an API key, or through a signed, expiring URL
(`?exp=&sig=`, what the upload answer's `file_url` carries) so an `<img>` tag works; anyone else
gets the same 404 as for a file that does not exist.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from ..errors import Forbidden
from ..security.auth import AGENT_NOT_CUSTOMER, Authenticator, credential_from
from ..security.signing import verify
from ..services.upload_service import Upload
from .deps import ServicesDep

router = APIRouter(tags=["文件"])

FILE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/*": {}, "application/octet-stream": {}}, "description": "文件内容"},
    401: {"description": "未认证"},
    404: {"description": "文件不存在"},
}
# Not length-limited here: a malformed signature is a bad signature (the caller may still be the owner),
# and security.signing.verify checks the exact shape.
Sig = Annotated[str | None, Query(description="URL 签名（base64url）")]
Exp = Annotated[str | None, Query(description="签名过期时间（Unix 秒）")]


def _owner_for(request: Request, name: str, exp: str | None, sig: str | None) -> str | None:
    """The owner the lookup is limited to (None: any); raises Unauthorized when nothing admits the caller."""
    authenticator: Authenticator = request.app.state.authenticator
    if not authenticator.enabled or verify(request.app.state.settings, name, exp, sig):
        return None
    actor = authenticator.authenticate(credential_from(request.headers))
    if actor.is_agent:  # an agent is not the customer (issue 10): a signed URL shows them the image
        raise Forbidden(AGENT_NOT_CUSTOMER)
    return actor.scope


_CACHE = {"Cache-Control": "private, max-age=3600"}


async def _file_response(
    services: ServicesDep, upload: Upload, *, media_type: str, filename: str | None, inline: bool
) -> Response:
    """The local file as FileResponse always sent it; from object storage, streamed with the same headers."""
    path = services.uploads.local_path(upload)
    disposition = "inline" if inline else "attachment"
    if path is not None:
        return FileResponse(
            path=path,
            filename=filename,
            media_type=media_type,
            content_disposition_type=disposition,
            headers=_CACHE,
        )
    stored = await services.uploads.stream(upload)
    headers = {**_CACHE, "Content-Length": str(stored.size)}
    if filename is not None:  # as FileResponse writes it
        quoted = quote(filename)
        headers["Content-Disposition"] = (
            f"{disposition}; filename*=utf-8''{quoted}"
            if quoted != filename
            else f'{disposition}; filename="{filename}"'
        )
    return StreamingResponse(stored.chunks, media_type=media_type, headers=headers)


@router.get("/static/uploads/{name}", response_class=FileResponse, responses=FILE_RESPONSES)
async def show_upload(
    name: str, request: Request, services: ServicesDep, exp: Exp = None, sig: Sig = None
) -> Response:
    """Show an uploaded image (inline)."""
    upload = await services.uploads.get(name, owner_id=_owner_for(request, name, exp, sig))
    return await _file_response(services, upload, media_type=upload.content_type, filename=None, inline=True)


@router.get("/download/{filename}", response_class=FileResponse, responses=FILE_RESPONSES)
async def download_file(
    filename: str, request: Request, services: ServicesDep, exp: Exp = None, sig: Sig = None
) -> Response:
    """Download an uploaded file as an attachment."""
    upload = await services.uploads.get(filename, owner_id=_owner_for(request, filename, exp, sig))
    return await _file_response(
        services,
        upload,
        media_type="application/octet-stream",
        filename=upload.original_name or upload.stored_name,
        inline=False,
    )


def setup_static_files(app: FastAPI) -> None:
    """Add the two routes. No folder is mounted: files are looked up through the upload service
    (which knows UPLOAD_DIR), so only recorded uploads are ever served."""
    app.include_router(router)

"""Image uploads: size-limited while reading, verified as a real image, stored under a random name."""

from __future__ import annotations

import logging
import os
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
from PIL import Image, ImageOps, UnidentifiedImageError

from ..config import Settings
from ..db import sessions as sessions_repo
from ..db import uploads as repo
from ..db.engine import Database
from ..db.models import Upload, utcnow
from ..errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from ..security.signing import upload_url

logger = logging.getLogger(__name__)

ALLOWED_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"}
# What Pillow says a file is -> the extension and media type it is stored and served with.
FORMATS = {
    "JPEG": (".jpg", "image/jpeg"),
    "PNG": (".png", "image/png"),
    "GIF": (".gif", "image/gif"),
    "WEBP": (".webp", "image/webp"),
    "BMP": (".bmp", "image/bmp"),
}
MAX_PIXELS = 40_000_000
MAX_TOTAL_PIXELS = 200_000_000  # all frames of an animation together
_KEPT_INFO = ("icc_profile", "transparency", "duration", "loop", "background", "disposal")
_ANIMATION_INFO = ("duration", "loop", "background", "disposal")
# Keys Pillow reports that describe how to show the pixels, not who took them, where or when.
_STRUCTURAL_INFO = frozenset(
    {
        *_KEPT_INFO,
        *("jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "adobe", "adobe_transform"),
        *("progressive", "progression", "gamma", "srgb", "chromaticity", "aspect", "interlace"),
        *("version", "extension", "blend", "default_image", "compression", "timestamp"),
    }
)
STORED_NAME = re.compile(r"^[0-9a-f]{32}\.(?:jpg|png|gif|webp|bmp)$")
_CHUNK = 64 * 1024


class ReadableUpload(Protocol):
    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


@dataclass(slots=True)
class ImageInfo:
    format: str
    width: int
    height: int
    rewritten: bool = False  # True: the clean copy is what gets stored


def _carries_metadata(img: Image.Image) -> bool:
    """Anything beyond what is needed to show the pixels (an unknown key counts: better safe)."""
    return any(key not in _STRUCTURAL_INFO for key in img.info) or bool(img.getexif())


def _inspect_image(path: Path, clean: Path) -> ImageInfo:
    """Decode the whole image; anything that is not a complete image of an allowed format is refused.

    An image carrying metadata (EXIF with GPS position, XMP, text chunks, comments) is written again
    to `clean` without it: customers photograph receipts and parcels at home. A clean file is kept
    byte for byte (no needless JPEG generation loss)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt = img.format or ""
                if fmt not in FORMATS:
                    raise BadRequest("文件内容不是支持的图片格式")
                frames = getattr(img, "n_frames", 1)
                if img.width * img.height > MAX_PIXELS or img.width * img.height * frames > MAX_TOTAL_PIXELS:
                    raise BadRequest("图片像素尺寸过大")
                img.load()
                if not _carries_metadata(img):
                    return ImageInfo(fmt, img.width, img.height)
                width, height = _reencode(img, fmt, frames, clean)
                return ImageInfo(fmt, width, height, rewritten=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest("图片像素尺寸过大") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise BadRequest("文件内容不是有效的图片") from None


def _reencode(img: Image.Image, fmt: str, frames: int, target: Path) -> tuple[int, int]:
    """Save the pixels (every frame of an animation) with only the metadata needed to show them."""
    # Plugins fall back to img.info for some keys when saving; leave them only harmless ones.
    kept = {key: img.info[key] for key in _KEPT_INFO if key in img.info}
    # The EXIF orientation goes with the EXIF: turn the pixels instead, so a photo stays upright.
    upright = ImageOps.exif_transpose(img) if frames == 1 else img
    img.info.clear()
    img.info.update(kept)
    params: dict[str, object] = {}
    if "icc_profile" in kept and fmt in ("JPEG", "PNG", "WEBP"):
        params["icc_profile"] = kept["icc_profile"]
    if frames > 1 and fmt in ("GIF", "WEBP", "PNG"):
        img.save(
            target, fmt, save_all=True, **{k: v for k, v in kept.items() if k in _ANIMATION_INFO}, **params
        )
        return img.width, img.height
    upright.info.clear()
    upright.info.update(kept)
    if fmt == "JPEG":
        if upright.mode not in ("RGB", "L", "CMYK"):
            upright = upright.convert("RGB")
        params["quality"] = 92
    elif "transparency" in kept:
        params["transparency"] = kept["transparency"]
    upright.save(target, fmt, **params)
    return upright.width, upright.height


def clean_filename(name: str | None) -> str:
    base = os.path.basename((name or "").replace("\\", "/"))
    return "".join(ch for ch in base if ch.isprintable())[:255]


class UploadService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.directory = Path(settings.upload_dir).resolve()

    @property
    def size_limit_message(self) -> str:
        return f"文件大小超过限制 ({self.settings.max_file_size // (1024 * 1024)}MB)"

    async def save(self, file: ReadableUpload, *, user_id: str, session_id: str) -> Upload:
        original = clean_filename(file.filename)
        extension = os.path.splitext(original.lower())[1]
        if extension not in ALLOWED_EXTENSIONS:
            raise BadRequest(f"不支持的文件类型。支持的格式: {', '.join(sorted(ALLOWED_EXTENSIONS))}")
        async with self.db.read() as db:
            session = await sessions_repo.get(db, session_id, owner_id=None)
        if session is not None and session.user_id != user_id:
            raise Forbidden("无权访问该会话")

        self.directory.mkdir(parents=True, exist_ok=True)
        temp = self.directory / f".incoming-{uuid.uuid4().hex}"
        clean = temp.with_name(temp.name + ".clean")
        try:
            # `size` stays what the client sent (the seed's meaning); metadata stripping only ever shrinks
            # a file by its metadata, so the quota counted in received bytes is the safe side.
            size = await self._copy_limited(file, temp)
            info = await anyio.to_thread.run_sync(_inspect_image, temp, clean)
            stored = clean if info.rewritten else temp
            await self._check_quota(user_id, size)
            suffix, content_type = FORMATS[info.format]
            upload_id = uuid.uuid4().hex
            stored_name = f"{upload_id}{suffix}"
            final = self.directory / stored_name
            os.replace(stored, final)
            row = Upload(
                id=upload_id,
                user_id=user_id,
                session_id=session_id,
                stored_name=stored_name,
                original_name=original,
                content_type=content_type,
                size=size,
                width=info.width,
                height=info.height,
                created_at=utcnow(),
            )
            try:
                async with self.db.transaction() as db:
                    await repo.add(db, row)
            except BaseException:
                final.unlink(missing_ok=True)
                raise
            return row
        finally:
            temp.unlink(missing_ok=True)
            clean.unlink(missing_ok=True)

    async def _check_quota(self, user_id: str, size: int) -> None:
        quota = self.settings.upload_quota_bytes
        if quota <= 0:
            return
        async with self.db.read() as db:
            used = await repo.total_size_for_user(db, user_id)
        # Two uploads racing past the line can each be admitted: the quota bounds storage, not to the byte.
        if used + size > quota:
            raise PayloadTooLarge(f"上传空间已用完（每位用户最多 {quota // (1024 * 1024)}MB）")

    def url_for(self, row: Upload) -> str:
        """The URL clients show the upload with (signed and expiring when auth is on)."""
        return upload_url(self.settings, row.stored_name)

    async def _copy_limited(self, file: ReadableUpload, target: Path) -> int:
        limit = self.settings.max_file_size
        size = 0
        async with await anyio.open_file(target, "wb") as out:
            while chunk := await file.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise BadRequest(self.size_limit_message)
                await out.write(chunk)
        if size == 0:
            raise BadRequest("请选择要上传的文件")
        return size

    def path_for(self, stored_name: str) -> Path:
        """The file of a stored upload; any name that is not one of ours is simply not found."""
        if not STORED_NAME.fullmatch(stored_name):
            raise NotFound("文件不存在")
        path = self.directory / stored_name
        if not path.is_file():
            raise NotFound("文件不存在")
        return path

    async def get(self, stored_name: str, *, owner_id: str | None) -> tuple[Upload, Path]:
        path = self.path_for(stored_name)
        async with self.db.read() as db:
            row = await repo.get_by_name(db, stored_name, owner_id=owner_id)
        if row is None:
            raise NotFound("文件不存在")
        return row, path

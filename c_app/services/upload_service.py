"""Image uploads: size-limited while reading, verified as a real image, stored under a random name.

What decoding an image costs is the sender's choice (a 156 KB GIF can hold five 40 Mpx frames), so it
is bounded before anything is decoded: the file's own structure (PNG chunks, JPEG segments, GIF blocks,
WebP chunks, the BMP header) is walked first, cheaply and with a cap on the number of blocks, for the
size, the number of frames, where the image ends, and whether it carries blocks that are not needed to
show it. Frames, frames x pixels and decoded bytes are checked against the settings; only then does
Pillow decode, in a worker thread, at most UPLOAD_DECODE_CONCURRENCY images at once. Whatever a decoder
raises on a malformed file is a 400.

What is stored is the image alone: metadata and unknown blocks are left out of the bytes and bytes after
the image's end cut off (every pixel as sent); it is decoded and written again only when that cannot
be done (a BMP, a photo turned by its EXIF orientation). A clean file is kept byte for byte.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
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
from .upload_storage import StoredStream, UploadStorage, build_storage

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
MAX_PIXELS = 40_000_000  # one frame
_BYTES_PER_PIXEL = 4  # Pillow keeps RGB, RGBA, CMYK, LA, I and F images at 4 bytes a pixel
# libjpeg writes 10 scans for a colour progressive JPEG, mozjpeg a few more; each scan is another pass.
_MAX_JPEG_SCANS = 100
_ORIENTATION = 0x0112  # EXIF tag
_KEPT_INFO = ("icc_profile", "transparency", "duration", "loop", "background", "disposal")
_ANIMATION_INFO = ("duration", "loop", "background", "disposal")
# Keys Pillow reports that describe how to show the pixels, not who took them, where or when.
_STRUCTURAL_INFO = frozenset(
    {
        *_KEPT_INFO,
        *("jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "adobe", "adobe_transform"),
        *("progressive", "progression", "gamma", "srgb", "chromaticity", "aspect", "interlace"),
        *("version", "extension", "blend", "default_image", "compression", "timestamp", "bbox"),
    }
)
STORED_NAME = re.compile(r"^[0-9a-f]{32}\.(?:jpg|png|gif|webp|bmp)$")
_CHUNK = 64 * 1024

INVALID = "文件内容不是有效的图片"
UNSUPPORTED = "文件内容不是支持的图片格式"
TOO_BIG = "图片像素尺寸过大"
TOO_COMPLEX = "图片文件结构过于复杂"


class ReadableUpload(Protocol):
    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


@dataclass(slots=True)
class ImageInfo:
    format: str
    width: int
    height: int
    rewritten: bool = False  # True: the clean copy is what gets stored


@dataclass(frozen=True, slots=True)
class ImageLimits:
    frames: int
    total_pixels: int  # frames x pixels of a frame (a GIF or WebP frame is decoded at the canvas size)
    decoded_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            settings.max_image_frames, settings.max_image_total_pixels, settings.max_image_decoded_bytes
        )


# --- the structure, walked before decoding -------------------------------------------------------


@dataclass(slots=True)
class _Layout:
    width: int
    height: int
    frames: int = 1
    end: int | None = None  # where the image ends; None: not known, the file is written again
    # Blocks not needed to show the image (metadata, comments, unknown chunks and segments), as byte
    # ranges: the stored copy is the file without them, every other byte (and so every pixel) as sent.
    drop: list[tuple[int, int]] = field(default_factory=list)
    reencode: bool = False  # something that cannot just be left out: the image is written again
    coefficient_bytes: int = 0  # a JPEG of several scans: libjpeg holds every coefficient at once
    lossless: bool = False  # a WebP in VP8L: written again losslessly


class _Blocks:
    """Counts the blocks a walk steps over: a file of countless tiny blocks costs a Python step (and,
    in Pillow, often an object) per block, so beyond a generous number it is refused. A real file's
    blocks are big (8 KB PNG IDATs, 255-byte GIF sub-blocks): 10,000 plus one per 256 bytes."""

    def __init__(self, data: bytes) -> None:
        self.left = 10_000 + len(data) // 256

    def step(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise BadRequest(TOO_COMPLEX)


def _too_many_frames(limits: ImageLimits) -> BadRequest:
    return BadRequest(f"动图帧数过多（最多 {limits.frames} 帧）")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SHOWN = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB", b"cICP"}
    | {b"bKGD", b"pHYs", b"acTL", b"fcTL", b"fdAT"}
)


def _png_layout(data: bytes) -> _Layout:
    blocks = _Blocks(data)
    layout = _Layout(0, 0)
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        blocks.step()
        length, kind = struct.unpack_from(">I4s", data, pos)
        start, body, pos = pos, pos + 8, pos + 12 + length
        if kind == b"IHDR":
            width, height = struct.unpack_from(">II", data, body)
            layout.width, layout.height = max(layout.width, width), max(layout.height, height)
        elif kind == b"acTL":  # an APNG: Pillow trusts this count, and every frame is the canvas's size
            layout.frames = max(layout.frames, struct.unpack_from(">I", data, body)[0])
        elif kind not in _PNG_SHOWN:  # tEXt, zTXt, iTXt, eXIf, tIME, private chunks
            layout.drop.append((start, pos))
        if kind == b"IEND":
            layout.end = pos if pos <= len(data) else None
            break
    # An APNG's frames are a numbered sequence of chunks: one that had to be dropped may have been a
    # damaged part of it, and Pillow then refuses the first frame of the stored copy. Written again.
    layout.reencode = layout.frames > 1 and bool(layout.drop)
    return layout


# A segment starts with fill bytes and a marker; entropy-coded data ends at the first marker that is
# neither a stuffed 0xFF00 nor a restart (RST0-7).
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_TABLES = frozenset({0xC4, 0xCC, 0xDB, 0xDC, 0xDD})  # DHT, DAC, DQT, DNL, DRI
_JPEG_SHOWN_APPS = ((0xE0, b"JFIF\x00"), (0xE2, b"ICC_PROFILE\x00"), (0xEE, b"Adobe"))


def _jpeg_layout(data: bytes) -> _Layout:
    blocks = _Blocks(data)
    layout = _Layout(0, 0)
    components: list[tuple[int, int]] = []
    progressive, scans, pos = False, 0, 2
    while True:
        blocks.step()
        found = _JPEG_MARKER.match(data, pos)
        if found is None:
            if pos < len(data):
                raise ValueError("bytes between JPEG segments")
            break  # no EOI: the end is not known
        start, marker, pos = found.start(), found.group(1)[0], found.end()
        if marker == 0xD9:  # EOI
            layout.end = pos
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        if marker == 0xD8:
            raise ValueError("a second SOI")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise ValueError("JPEG segment length")
        segment, pos = data[pos + 2 : pos + length], pos + length
        if marker in _JPEG_FRAMES:
            height, width, count = struct.unpack_from(">HHB", segment, 1)
            layout.width, layout.height = max(layout.width, width), max(layout.height, height)
            components = [(segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 15) for i in range(count)]
            progressive |= marker in _JPEG_PROGRESSIVE
        elif marker == 0xDA:  # SOS: a scan, then its entropy-coded data
            scans += 1
            if scans > _MAX_JPEG_SCANS:
                raise BadRequest(TOO_COMPLEX)
            after = _JPEG_SCAN_END.search(data, pos)
            if after is None:
                break
            pos = after.start()
        elif 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn (EXIF, XMP, IPTC, C2PA...), COM
            if not any(marker == m and segment.startswith(tag) for m, tag in _JPEG_SHOWN_APPS):
                layout.drop.append((start, pos))
        elif marker not in _JPEG_TABLES:
            layout.drop.append((start, pos))
    if (progressive or scans > 1) and components:
        # The whole image's DCT coefficients stay in memory until the last scan: 2 bytes each,
        # one per pixel of every component at that component's sampling.
        h_max, v_max = max(h for h, _ in components), max(v for _, v in components)
        for h, v in components:
            blocks_wide = _ceil_div(_ceil_div(layout.width * h, h_max), 8)
            blocks_high = _ceil_div(_ceil_div(layout.height * v, v_max), 8)
            layout.coefficient_bytes += blocks_wide * blocks_high * 64 * 2
    return layout


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


_GIF_LOOP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")


def _gif_layout(data: bytes, limits: ImageLimits) -> _Layout:
    """The same walk as Pillow's (which also reads each frame at the size of the screen grown to hold
    every frame), counting frames as it goes instead of seeking through all of them."""
    blocks = _Blocks(data)
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    layout = _Layout(width, height, frames=0, end=len(data))  # without a trailer, the file ends the image
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)

    def skip_sub_blocks(pos: int) -> int:
        while pos < len(data):
            blocks.step()
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
        return pos

    while pos < len(data):
        introducer = data[pos]
        if introducer == 0x3B:  # trailer
            layout.end = pos + 1
            break
        if introducer == 0x21:  # extension: label, then sub-blocks
            start, label, size = pos, data[pos + 1], data[pos + 2]
            first = data[pos + 3 : pos + 3 + size]
            pos = skip_sub_blocks(pos + 2)
            if label == 0x01:  # plain text: drawn, and the graphic control before it is its own
                layout.reencode = True
            elif not (label == 0xF9 or (label == 0xFF and first in _GIF_LOOP_APPS)):
                layout.drop.append((start, pos))  # comments, XMP and other application blocks
        elif introducer == 0x2C:  # a frame: descriptor, local palette, LZW code size, sub-blocks
            x, y, w, h, frame_flags = struct.unpack_from("<HHHHB", data, pos + 1)
            layout.frames += 1
            if layout.frames > limits.frames:
                raise _too_many_frames(limits)
            layout.width, layout.height = max(layout.width, x + w), max(layout.height, y + h)
            pos += 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0) + 1
            pos = skip_sub_blocks(pos)
        else:
            raise ValueError("not a GIF block")
    return layout


_WEBP_SHOWN = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})
_WEBP_FRAME = frozenset({b"VP8 ", b"VP8L", b"ALPH"})  # what an ANMF chunk holds
_WEBP_EXIF, _WEBP_XMP = 0x08, 0x04  # VP8X flags


def _webp_layout(data: bytes, limits: ImageLimits) -> _Layout:
    blocks = _Blocks(data)
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end = 8 + riff_size  # libwebp reads nothing past the RIFF chunk
    layout = _Layout(0, 0, end=end if end <= len(data) else None)
    canvas: tuple[int, int] | None = None
    frames = 0

    def walk(pos: int, stop: int, in_frame: bool) -> None:
        nonlocal canvas, frames
        while pos + 8 <= stop:
            blocks.step()
            kind, size = struct.unpack_from("<4sI", data, pos)
            start, body, pos = pos, pos + 8, pos + 8 + size + (size & 1)
            if kind == b"VP8X" and not in_frame:
                canvas = (
                    1 + int.from_bytes(data[body + 4 : body + 7], "little"),
                    1 + int.from_bytes(data[body + 7 : body + 10], "little"),
                )
            elif kind == b"ANMF" and not in_frame:
                frames += 1
                if frames > limits.frames:
                    raise _too_many_frames(limits)
                walk(body + 16, min(pos, stop), True)
            elif kind == b"VP8L":
                layout.lossless = True
                bits = int.from_bytes(data[body + 1 : body + 5], "little")
                layout.width, layout.height = (
                    max(layout.width, (bits & 0x3FFF) + 1),
                    max(layout.height, ((bits >> 14) & 0x3FFF) + 1),
                )
            elif kind == b"VP8 ":
                w, h = struct.unpack_from("<HH", data, body + 6)
                layout.width, layout.height = max(layout.width, w & 0x3FFF), max(layout.height, h & 0x3FFF)
            elif in_frame and kind not in _WEBP_FRAME:
                layout.reencode = True
            elif not in_frame and kind not in _WEBP_SHOWN:  # EXIF, XMP, unknown chunks
                layout.drop.append((start, pos))

    walk(12, min(end, len(data)), False)
    if canvas is not None:  # frames are decoded onto the canvas
        layout.width, layout.height = max(layout.width, canvas[0]), max(layout.height, canvas[1])
    layout.frames = max(frames, 1)
    return layout


def _bmp_layout(data: bytes) -> _Layout:
    """Always written again (losslessly): a BMP may keep bytes between its headers and its pixels."""
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return _Layout(width, abs(height))


def _layout(data: bytes, limits: ImageLimits) -> tuple[str, _Layout] | None:
    """The format the bytes claim and their structure; None: none of the accepted formats."""
    if data.startswith(_PNG_SIGNATURE):
        return "PNG", _png_layout(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF", _gif_layout(data, limits)
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG", _jpeg_layout(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", _webp_layout(data, limits)
    if data.startswith(b"BM"):
        return "BMP", _bmp_layout(data)
    return None


def _check(layout: _Layout, limits: ImageLimits) -> None:
    if layout.width < 1 or layout.height < 1 or layout.frames < 1:
        raise ValueError("no image")
    if layout.frames > limits.frames:
        raise _too_many_frames(limits)
    pixels = layout.width * layout.height
    total = pixels * layout.frames
    decoded = total * _BYTES_PER_PIXEL + layout.coefficient_bytes
    if pixels > MAX_PIXELS or total > limits.total_pixels or decoded > limits.decoded_bytes:
        raise BadRequest(TOO_BIG)


# --- decoding ------------------------------------------------------------------------------------


def _carries_metadata(img: Image.Image) -> bool:
    """Anything beyond what is needed to show the pixels (an unknown key counts: better safe)."""
    return any(key not in _STRUCTURAL_INFO for key in img.info) or bool(img.getexif())


def _inspect_image(path: Path, clean: Path, limits: ImageLimits) -> ImageInfo:
    """Check the file's structure against `limits`, then decode it; anything that is not a complete
    image of an allowed format is refused, whatever the decoder raised.

    Metadata (EXIF with GPS position, XMP, text chunks, comments) and unknown blocks are not stored:
    customers photograph receipts and parcels at home. They are left out of the bytes (written to
    `clean`), as are bytes after the image's end; the image is decoded and written again only when
    that cannot be done (a BMP, a turned photo, an unknown end). A clean file is kept byte for byte."""
    try:
        return _inspect(path.read_bytes(), clean, limits)
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(TOO_BIG) from None
    except UnidentifiedImageError:
        raise BadRequest(INVALID) from None
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, OverflowError, EOFError,
        # struct.error, IndexError, MemoryError...: decoders raise anything on a malformed file.
        logger.info("image refused: %s: %.200s", type(exc).__name__, exc)
        raise BadRequest(INVALID) from None


def _inspect(data: bytes, clean: Path, limits: ImageLimits) -> ImageInfo:
    found = _layout(data, limits)
    if found is None:
        with Image.open(io.BytesIO(data)):  # UnidentifiedImageError when no format knows the bytes
            raise BadRequest(UNSUPPORTED)
    fmt, layout = found
    _check(layout, limits)
    with Image.open(io.BytesIO(data), formats=[fmt]) as img:
        if img.format != fmt:  # a JPEG that is really an MPO
            raise BadRequest(UNSUPPORTED if img.format not in FORMATS else INVALID)
        # Pillow must see what the walk saw (GIF: not asked, counting would seek through every frame).
        frames = layout.frames if fmt == "GIF" else getattr(img, "n_frames", 1)
        if img.width > layout.width or img.height > layout.height or frames > layout.frames:
            raise ValueError("Pillow reads another structure")
        img.load()
        # The EXIF orientation goes with the EXIF: a photo turned by it has its pixels turned instead.
        turned = layout.frames == 1 and img.getexif().get(_ORIENTATION, 1) in range(2, 9)
        if layout.end is not None and not layout.reencode and not turned:
            if layout.drop or layout.end < len(data):
                # Metadata and unknown blocks left out, bytes after the image's end (a ZIP after a
                # PNG's IEND) cut off; nothing decoded again, no JPEG generation loss.
                stripped = _without(data, fmt, layout)
                if _is_clean_copy(stripped, fmt, img):
                    clean.write_bytes(stripped)
                    return ImageInfo(fmt, img.width, img.height, rewritten=True)
            elif not _carries_metadata(img):
                return ImageInfo(fmt, img.width, img.height)
        width, height = _reencode(img, fmt, layout, clean)
        return ImageInfo(fmt, width, height, rewritten=True)


def _without(data: bytes, fmt: str, layout: _Layout) -> bytes:
    """`data` up to the image's end, without the dropped blocks."""
    assert layout.end is not None
    kept, pos = [], 0
    for start, stop in layout.drop:
        kept.append(data[pos:start])
        pos = stop
    kept.append(data[pos : layout.end])
    out = bytearray(b"".join(kept))
    if fmt == "WEBP":
        struct.pack_into("<I", out, 4, len(out) - 8)  # the RIFF size
        if out[12:16] == b"VP8X":
            out[20] &= ~(_WEBP_EXIF | _WEBP_XMP) & 0xFF  # those chunks are gone
    return bytes(out)


def _is_clean_copy(stripped: bytes, fmt: str, original: Image.Image) -> bool:
    """Whether Pillow reads the stripped bytes as the same image with nothing beyond what shows it
    (read lazily: nothing is decoded). If not, the walk missed something: the image is written again."""
    with Image.open(io.BytesIO(stripped), formats=[fmt]) as copy:
        return (
            copy.format == fmt
            and copy.size == original.size
            and (fmt == "GIF" or getattr(copy, "n_frames", 1) == getattr(original, "n_frames", 1))
            and all(key in _STRUCTURAL_INFO for key in copy.info)
        )


def _reencode(img: Image.Image, fmt: str, layout: _Layout, target: Path) -> tuple[int, int]:
    """Save the pixels (every frame of an animation) with only the metadata needed to show them."""
    frames = layout.frames
    # Plugins fall back to img.info for some keys when saving; leave them only harmless ones.
    kept = {key: img.info[key] for key in _KEPT_INFO if key in img.info}
    # The EXIF orientation goes with the EXIF: turn the pixels instead, so a photo stays upright.
    upright = ImageOps.exif_transpose(img) if frames == 1 else img
    img.info.clear()
    img.info.update(kept)
    params: dict[str, object] = {}
    if "icc_profile" in kept and fmt in ("JPEG", "PNG", "WEBP"):
        params["icc_profile"] = kept["icc_profile"]
    if fmt == "WEBP":
        # libwebp's fastest method: 36 Mpx took 2 s instead of 18 s (default method), 5% larger.
        params.update(method=0, lossless=layout.lossless, quality=0 if layout.lossless else 80)
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
        self.directory = Path(settings.upload_dir).resolve()  # the files (local storage), scratch files
        self.storage: UploadStorage = build_storage(settings, self.directory)
        self.limits = ImageLimits.from_settings(settings)
        # Decoding is CPU and memory: a few at once, in worker threads, the event loop left free.
        self._decoding = anyio.CapacityLimiter(settings.upload_decode_concurrency)

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
            # `size` stays what the client sent (the seed's meaning), and the quota counts it: leaving
            # metadata out only shrinks a file; the rare image written again stays within its limits.
            size = await self._copy_limited(file, temp)
            info = await anyio.to_thread.run_sync(
                _inspect_image, temp, clean, self.limits, limiter=self._decoding
            )
            stored = clean if info.rewritten else temp
            await self._check_quota(user_id, size)
            suffix, content_type = FORMATS[info.format]
            upload_id = uuid.uuid4().hex
            stored_name = f"{upload_id}{suffix}"
            await self.storage.put(stored_name, stored, content_type)
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
                with anyio.CancelScope(shield=True):
                    await self.storage.delete(stored_name)
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

    async def get(self, stored_name: str, *, owner_id: str | None) -> Upload:
        """The row of a stored upload whose file exists (limited to `owner_id`'s, unless None); any
        name that is not one of ours, or whose file is gone, is simply not found."""
        if not STORED_NAME.fullmatch(stored_name) or not await self.storage.exists(stored_name):
            raise NotFound("文件不存在")
        async with self.db.read() as db:
            row = await repo.get_by_name(db, stored_name, owner_id=owner_id)
        if row is None:
            raise NotFound("文件不存在")
        return row

    async def exists(self, stored_name: str) -> bool:
        return bool(STORED_NAME.fullmatch(stored_name)) and await self.storage.exists(stored_name)

    def local_path(self, row: Upload) -> Path | None:
        """The file on this machine's disk (local storage), served as it is; None: stream it."""
        return self.storage.local_path(row.stored_name)

    async def read(self, row: Upload) -> bytes:
        return await self.storage.get(row.stored_name)

    async def stream(self, row: Upload) -> StoredStream:
        return await self.storage.stream(row.stored_name)

    async def remove_files(self, names: Iterable[str]) -> int:
        """Remove the files of these stored names; returns how many there were (others: already gone)."""
        removed = 0
        for name in names:
            if STORED_NAME.fullmatch(name) and await self.storage.delete(name):
                removed += 1
        return removed

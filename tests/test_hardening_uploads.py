"""Hardening of uploads and of the URLs that serve them, found by an attacker's probe.

- Decoding is bounded before it starts: frames, frames x pixels, decoded bytes, and the number of
  structural blocks (chunks, segments, sub-blocks) are read from the file's own structure first;
  at most UPLOAD_DECODE_CONCURRENCY images are decoded at once; every decoder error is a 400.
- What is stored is the image and nothing else: no bytes after its end, no unknown blocks inside it.
- A malformed `exp`/`sig` on a file URL is a bad signature (the same 401/404), never a 500.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from PIL import Image, PngImagePlugin

from c_app.db.models import Upload
from c_app.services import upload_service

from .security_utils import bearer, jwt_settings, token
from .utils import assert_envelope, count, image_bytes, jpeg_bytes, png_bytes, upload, uploaded

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

INVALID = "文件内容不是有效的图片"
TOO_BIG = "图片像素尺寸过大"
TOO_COMPLEX = "图片文件结构过于复杂"
ZIP = b"PK\x03\x04" + b"\x14\x00\x00\x00\x08\x00" + b"secret.txt" * 20 + b"PK\x05\x06" + b"\x00" * 18


# --- images written by hand ----------------------------------------------------------------------


def gif_pixel(colour: int) -> bytes:
    """LZW data of one pixel: minimum code size 2, then clear (4), the colour, end (5), 3 bits each."""
    return b"\x02\x02" + struct.pack("<H", 4 | (colour << 3) | (5 << 6)) + b"\x00"


def gif_frame(colour: int = 0, *, x: int = 0, y: int = 0, duration: int = 1) -> bytes:
    """A graphic control extension and a 1x1 frame at (x, y)."""
    return (
        b"!\xf9\x04\x00"
        + struct.pack("<H", duration)
        + b"\x00\x00,"
        + struct.pack("<HHHHB", x, y, 1, 1, 0)
        + gif_pixel(colour)
    )


def gif(*blocks: bytes, screen: tuple[int, int] = (1, 1), trailer: bool = True) -> bytes:
    """A GIF89a with a two-colour global palette, the NETSCAPE loop extension and `blocks`."""
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return head + loop + b"".join(blocks) + (b";" if trailer else b"")


def gif_comment(text: bytes) -> bytes:
    return b"!\xfe" + bytes([len(text)]) + text + b"\x00"


# A comment and a plain-text block (text drawn over the image, which no browser draws): the image
# cannot simply be stored without them, so it is decoded and written again.
REWRITE = gif_comment(b"hi") + b"!\x01\x0c" + bytes(12) + b"\x01x\x00"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with(chunks: bytes, base: bytes | None = None) -> bytes:
    """`base` (a small PNG) with `chunks` inserted right after its IHDR."""
    base = base or png_bytes((8, 8))
    return base[:33] + chunks + base[33:]


def jpeg_with(segments: bytes, base: bytes | None = None) -> bytes:
    """`base` (a small JPEG) with `segments` inserted right after its SOI marker."""
    base = base or jpeg_bytes((20, 10))
    return base[:2] + segments + base[2:]


def webp_with_chunk(data: bytes, chunk: bytes) -> bytes:
    """A WebP with one more RIFF chunk at its end (the RIFF size follows)."""
    body = data[12:] + chunk
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def animated(fmt: str, frames: int = 3, size: tuple[int, int] = (16, 12), **save: Any) -> bytes:
    images = [Image.new("RGB", size, (40 * i, 255 - 40 * i, 90)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, fmt, save_all=True, append_images=images[1:], duration=80, loop=0, **save)
    return buf.getvalue()


# --- helpers -------------------------------------------------------------------------------------


def stored_bytes(app: FastAPI, data: dict[str, Any]) -> bytes:
    return (Path(app.state.settings.upload_dir) / data["filename"]).read_bytes()


def pixels(data: bytes) -> list[bytes]:
    """Every frame's RGBA pixels."""
    img = Image.open(io.BytesIO(data))
    out = []
    for i in range(getattr(img, "n_frames", 1)):
        img.seek(i)
        out.append(img.convert("RGBA").tobytes())
    return out


async def assert_refused(app: FastAPI, response: httpx.Response, message: str) -> None:
    assert_envelope(response, 400, message, "HTTPException")
    folder = Path(app.state.settings.upload_dir)
    assert not folder.exists() or list(folder.iterdir()) == []
    assert await count(app, Upload) == 0


# --- 3. decoding is bounded before it starts ------------------------------------------------------


@pytest.mark.parametrize("frames", [101, 100_000])
async def test_gif_with_too_many_frames_is_refused(
    app: FastAPI, client: httpx.AsyncClient, frames: int
) -> None:
    data = gif(*(gif_frame(i % 2) for i in range(frames)))
    response = await upload(client, data, "many.gif", content_type="image/gif")
    await assert_refused(app, response, "动图帧数过多（最多 100 帧）")


async def test_gif_of_as_many_frames_as_allowed_keeps_them(app: FastAPI, client: httpx.AsyncClient) -> None:
    data = gif(*(gif_frame(i % 2) for i in range(100)))
    stored = stored_bytes(app, await uploaded(client, data, "ok.gif", content_type="image/gif"))
    assert stored == data
    assert Image.open(io.BytesIO(stored)).n_frames == 100


async def test_frame_limit_is_a_setting(start_app: Any) -> None:
    app, client = await start_app(max_image_frames=3)
    response = await upload(client, animated("GIF", 4), "four.gif", content_type="image/gif")
    await assert_refused(app, response, "动图帧数过多（最多 3 帧）")
    response = await upload(
        client, animated("WEBP", 4, lossless=True), "four.webp", content_type="image/webp"
    )
    await assert_refused(app, response, "动图帧数过多（最多 3 帧）")
    assert (
        await upload(client, animated("GIF", 3), "three.gif", content_type="image/gif")
    ).status_code == 200


def actl(frames: int) -> bytes:
    return png_chunk(b"acTL", struct.pack(">II", frames, 0))


@pytest.mark.parametrize(
    "make",
    [
        # Every GIF frame is decoded at the size of the whole screen: two 1x1 frames on a
        # 5000x5000 screen are 50 Mpx, over the 40 Mpx an upload may decode.
        lambda: gif(gif_frame(0), gif_frame(1), screen=(5000, 5000)),
        # A later frame placed far out grows the screen (6001x6001 = 36 Mpx, twice).
        lambda: gif(gif_frame(0), gif_frame(1, x=6000, y=6000)),
        # An APNG's frames are as big as its canvas: 2 x 25 Mpx.
        lambda: png_with(actl(2), image_bytes("PNG", (5000, 5000), 0, mode="1")),
    ],
    ids=["gif-screen", "gif-offset", "apng"],
)
async def test_frames_times_pixels_is_bounded(app: FastAPI, client: httpx.AsyncClient, make: Any) -> None:
    data = make()
    assert len(data) < 100_000
    name = "bomb.gif" if data.startswith(b"GIF") else "bomb.png"
    response = await upload(client, data, name, content_type="image/gif")
    await assert_refused(app, response, TOO_BIG)


async def test_decoded_bytes_are_bounded(start_app: Any) -> None:
    app, client = await start_app(max_image_decoded_bytes=1_000_000)
    response = await upload(client, png_bytes((600, 600)), "big.png")  # 360 kpx, 1.44 MB decoded
    await assert_refused(app, response, TOO_BIG)
    assert (await upload(client, png_bytes((400, 400)))).status_code == 200  # 640 KB


async def test_a_progressive_jpeg_counts_its_coefficients(start_app: Any) -> None:
    """libjpeg keeps every DCT coefficient of a progressive JPEG until its last scan: 2 bytes per pixel
    and component on top of the pixels (measured: 36 Mpx at 4:4:4 took 344 MB instead of 138 MB)."""
    app, client = await start_app(max_image_decoded_bytes=2_000_000)
    photo = Image.linear_gradient("L").resize((500, 500)).convert("RGB")
    baseline, progressive = io.BytesIO(), io.BytesIO()
    photo.save(baseline, "JPEG", quality=90, subsampling=0)  # 250 kpx: 1 MB of pixels
    photo.save(progressive, "JPEG", quality=90, subsampling=0, progressive=True)  # + 1.5 MB
    response = await upload(client, progressive.getvalue(), "p.jpg", content_type="image/jpeg")
    await assert_refused(app, response, TOO_BIG)
    data = await uploaded(client, baseline.getvalue(), "b.jpg", content_type="image/jpeg")
    assert stored_bytes(app, data) == baseline.getvalue()


async def test_total_pixels_are_a_setting(start_app: Any) -> None:
    app, client = await start_app(max_image_total_pixels=1000)
    response = await upload(client, animated("GIF", 3, (20, 20)), "a.gif", content_type="image/gif")
    await assert_refused(app, response, TOO_BIG)  # 3 x 400 px


@pytest.mark.parametrize(
    ("name", "make"),
    [
        # 30,000 empty chunks Pillow walks one by one in Python (800k took 5 s).
        ("chunks.png", lambda: png_with(png_chunk(b"zzZz", b"") * 30_000)),
        # 30,000 empty APP9 segments: each one a Python step and a list entry (2.5M took 9 s, 400 MB).
        ("segments.jpg", lambda: jpeg_with(b"\xff\xe9\x00\x02" * 30_000, jpeg_bytes((8, 8)))),
        # 60,000 one-byte GIF sub-blocks in a comment.
        ("blocks.gif", lambda: gif(b"!\xfe" + b"\x01x" * 60_000 + b"\x00", gif_frame(0))),
    ],
)
async def test_files_of_countless_tiny_blocks_are_refused(
    app: FastAPI, client: httpx.AsyncClient, name: str, make: Any
) -> None:
    response = await upload(client, make(), name)
    await assert_refused(app, response, TOO_COMPLEX)


async def test_at_most_two_images_are_decoded_at_once(
    start_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _app, client = await start_app(upload_decode_concurrency=2, rate_limit_upload="0")
    real = upload_service._inspect_image
    lock = threading.Lock()
    running = peak = 0
    threads: set[int] = set()

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        try:
            time.sleep(0.2)
            return real(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(upload_service, "_inspect_image", counting)
    results: list[int] = []

    async def one(i: int) -> None:
        results.append((await upload(client, png_bytes(color=(i, 0, 0)), user_id=f"u{i}")).status_code)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(one, i)
    assert results == [200] * 5
    assert peak == 2
    assert threading.get_ident() not in threads  # never on the event loop's thread


@pytest.mark.parametrize(
    "data",
    [
        # Written again (a comment for the old code, a plain-text block for the new), every frame is
        # decoded. Two identical frames are merged, their durations adding up past what a GIF can
        # hold: OverflowError.
        gif(REWRITE, gif_frame(0, duration=65535), gif_frame(0, duration=65535)),
        # A second frame cut short: IndexError, struct.error inside Pillow's frame parser.
        gif(REWRITE, gif_frame(0), b"!", trailer=False),
        gif(REWRITE, gif_frame(0), b",\x00\x00", trailer=False),
        gif(REWRITE, gif_frame(0), b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0x87) + b"\x00" * 10),
        gif(REWRITE, gif_frame(0), b"!\xf9\x01\x00\x00," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)),
        # Garbage where a block should start.
        gif(gif_frame(0), b"\x99\x99", gif_frame(1)),
    ],
    ids=[
        "duration-overflow",
        "ext-at-eof",
        "descriptor-cut",
        "palette-cut",
        "short-gce",
        "junk-between-blocks",
    ],
)
async def test_every_decoder_error_is_a_400(app: FastAPI, client: httpx.AsyncClient, data: bytes) -> None:
    response = await upload(client, data, "broken.gif", content_type="image/gif")
    await assert_refused(app, response, INVALID)


# --- what is kept: frames, and the image alone ----------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
async def test_animation_with_metadata_keeps_its_frames(
    app: FastAPI, client: httpx.AsyncClient, fmt: str
) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker at home"
    extra = {
        "GIF": {"comment": b"home address"},
        "WEBP": {"exif": exif.tobytes(), "lossless": True},
        "PNG": {"pnginfo": PngImagePlugin.PngInfo(), "exif": exif.tobytes()},
    }[fmt]
    if fmt == "PNG":
        extra["pnginfo"].add_text("Comment", "home address")
    data = animated(fmt, 3, **extra)
    name = f"a.{fmt.lower()}"
    stored = stored_bytes(app, await uploaded(client, data, name, content_type=f"image/{fmt.lower()}"))
    assert b"home address" not in stored and b"Camera maker" not in stored
    assert Image.open(io.BytesIO(stored)).n_frames == 3
    assert pixels(stored) == pixels(data)


async def test_animation_without_metadata_is_kept_byte_for_byte(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for fmt in ("GIF", "WEBP", "PNG"):
        data = animated(fmt, 3, **({"lossless": True} if fmt == "WEBP" else {}))
        name = f"a.{fmt.lower()}"
        assert stored_bytes(app, await uploaded(client, data, name, content_type="image/x")) == data


async def test_comment_in_a_later_gif_frame_is_stripped(app: FastAPI, client: httpx.AsyncClient) -> None:
    data = gif(gif_frame(0), gif_frame(1), gif_comment(b"home address"), gif_frame(0))
    stored = stored_bytes(app, await uploaded(client, data, "c.gif", content_type="image/gif"))
    assert b"home address" not in stored
    assert Image.open(io.BytesIO(stored)).n_frames == 3
    assert pixels(stored) == pixels(data)


def _webp() -> bytes:
    return image_bytes("WEBP", (16, 16), (10, 200, 30), lossless=True)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("a.png", lambda: png_bytes((20, 10))),
        ("a.jpg", lambda: jpeg_bytes((20, 10))),
        ("a.gif", lambda: animated("GIF", 2)),
        ("a.webp", _webp),
        ("a.bmp", lambda: image_bytes("BMP", (20, 10))),
    ],
)
async def test_bytes_after_the_image_are_not_stored(
    app: FastAPI, client: httpx.AsyncClient, name: str, make: Any
) -> None:
    image = make()
    data = image + ZIP
    info = await uploaded(client, data, name, content_type="image/x")
    stored = stored_bytes(app, info)
    assert b"PK\x03\x04" not in stored and b"secret.txt" not in stored
    assert pixels(stored) == pixels(image)
    if not name.endswith(".bmp"):  # BMP is always written again (lossless): it may hide bytes anywhere
        assert stored == image  # cut at the image's end: nothing re-encoded
    assert info["size"] == len(data)  # the size the client sent, as before
    assert (await client.get(info["file_url"])).content == stored


def _gif_one_frame() -> bytes:
    return gif(gif_frame(0))


@pytest.mark.parametrize(
    ("name", "make", "clean"),
    [
        ("a.png", lambda: png_with(png_chunk(b"zIPp", ZIP)), lambda: png_bytes((8, 8))),
        (
            "a.jpg",
            lambda: jpeg_with(b"\xff\xe9" + struct.pack(">H", len(ZIP) + 2) + ZIP),
            lambda: jpeg_bytes((20, 10)),
        ),
        (
            "a.gif",
            lambda: gif(
                b"!\xff\x0bZIPDATA01.0" + bytes([len(ZIP[:255])]) + ZIP[:255] + b"\x00", gif_frame(0)
            ),
            _gif_one_frame,
        ),
        ("a.webp", lambda: webp_with_chunk(_webp(), b"ZIPx" + struct.pack("<I", len(ZIP)) + ZIP), _webp),
    ],
)
async def test_unknown_blocks_inside_the_image_are_left_out(
    app: FastAPI, client: httpx.AsyncClient, name: str, make: Any, clean: Any
) -> None:
    stored = stored_bytes(app, await uploaded(client, make(), name, content_type="image/x"))
    assert stored == clean()  # the block left out, every other byte as sent


async def test_metadata_is_left_out_without_decoding_again(app: FastAPI, client: httpx.AsyncClient) -> None:
    """A photo's EXIF (here with a GPS position, no orientation) is left out of the bytes: the JPEG is
    not encoded again, so not one pixel changes."""
    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "N", 2: (39.0, 54.0, 26.0), 3: "E", 4: (116.0, 23.0, 29.0)})
    photo = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=75, exif=exif, comment=b"home address")
    original = buf.getvalue()
    stored = stored_bytes(app, await uploaded(client, original, "gps.jpg", content_type="image/jpeg"))
    assert b"Exif" not in stored and b"home address" not in stored
    assert not Image.open(io.BytesIO(stored)).getexif()
    assert pixels(stored) == pixels(original)
    assert len(original) - len(stored) > 100  # only segments went; the scan is as sent

    # A WebP's EXIF and XMP chunks likewise, its VP8X flags following.
    webp = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(
        webp, "WEBP", lossless=True, exif=exif.tobytes(), xmp=b"<x:xmpmeta/>"
    )
    stored = stored_bytes(app, await uploaded(client, webp.getvalue(), "m.webp", content_type="image/webp"))
    image = Image.open(io.BytesIO(stored))
    assert "exif" not in image.info and "xmp" not in image.info and b"xmpmeta" not in stored
    assert pixels(stored) == pixels(webp.getvalue())


# --- 9. a malformed signature is a bad signature ---------------------------------------------------

BAD_EXP = [
    "%C2%B2",  # "²": str.isdigit() says yes, int() says no
    "%D9%A1%D9%A2%D9%A3",  # Arabic-Indic digits
    "%EF%BC%91%EF%BC%92%EF%BC%93",  # full-width digits
    "9" * 5000,  # past int()'s 4300-digit limit
    "-5",
    "",
    "+123",
    "1_000",
    "%201",
    "1%0A",
]
BAD_SIG = ["x", "%C3%A9" * 10, "A" * 5000, "", "%00"]


@pytest.mark.parametrize("route", ["/static/uploads", "/download"])
async def test_malformed_signature_is_refused_like_a_bad_one(start_app: Any, route: str) -> None:
    _app, client = await start_app(**jwt_settings())
    alice = bearer(token("alice"))
    data = await uploaded(client, user_id="alice", session_id="s-alice", headers=alice)
    name = data["filename"]
    good_exp, good_sig = data["file_url"].split("?exp=")[1].split("&sig=")
    queries = [f"exp={exp}&sig={good_sig}" for exp in BAD_EXP] + [
        f"exp={good_exp}&sig={sig}" for sig in BAD_SIG
    ]
    for query in queries:
        response = await client.get(f"{route}/{name}?{query}")
        assert_envelope(response, 401)
        # The owner's credentials still work alongside a malformed signature.
        assert (await client.get(f"{route}/{name}?{query}", headers=alice)).status_code == 200, query
    assert (await client.get(f"{route}/{name}?exp={good_exp}&sig={good_sig}")).status_code == 200


def test_verify_parses_rather_than_guesses() -> None:
    from c_app.config import Settings
    from c_app.security.signing import sign, verify

    settings = Settings(_env_file=None, url_signing_secret="s")  # type: ignore[call-arg]
    exp, sig = sign(settings, "a.png")
    assert verify(settings, "a.png", str(exp), sig)
    for bad in ["²", "١٢٣", "１２３", "9" * 5000, f" {exp}", f"{exp}\n", f"+{exp}", "-1", "", "0x10"]:
        assert not verify(settings, "a.png", bad, sig)
    for bad in [sig + "=", sig[:-1], "é" * 43, sig + "A"]:
        assert not verify(settings, "a.png", str(exp), bad)

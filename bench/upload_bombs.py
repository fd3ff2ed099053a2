"""Image upload bombs: wall time and peak memory of POST /api/v1/chat/upload-image, a fresh process a case.

    python bench/upload_bombs.py                       # the code in this checkout
    python bench/upload_bombs.py --code /tmp/hu        # another checkout (e.g. a `git worktree` of HEAD)
    python bench/upload_bombs.py --cases gif-5x6300 jpeg-control --timeout 60

Each case runs in its own subprocess (`--worker`): the app (SQLite, no sample knowledge base) is
started, a small PNG is uploaded to warm it up, then the case's upload(s) go through ASGI in-process.
Reported: the HTTP status(es); the wall time of the upload(s) (a case under a second is repeated, up
to 9 runs while under a second in all, and the median shown; `n` is the number of runs); the
process's peak RSS while uploading (VmHWM, reset after the warm-up); and that peak minus the RSS just
before uploading (what the upload cost). A case still running after `--timeout` seconds is killed
and reported as such. The payloads are built once, in this process, into a temporary folder.

The GIF cases carry a one-line comment (metadata): that is what makes the seed write the image
again (every frame decoded and quantised); the `plain` variants have none. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --- payloads ------------------------------------------------------------------------------------


def gif_of_tiny_frames(count: int, *, identical: bool, comment: bool) -> bytes:
    """`count` 1x1 frames written by hand (Pillow's writer merges identical frames)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    out += b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    if comment:
        out += b"!\xfe\x02hi\x00"
    for i in range(count):
        colour = 0 if identical else i % 2
        out += b"!\xf9\x04\x00" + struct.pack("<H", 1) + b"\x00\x00"
        out += b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        # LZW, minimum code size 2: clear (4), the pixel, end (5), three bits each.
        out += b"\x02\x02" + struct.pack("<H", 4 | (colour << 3) | (5 << 6)) + b"\x00"
    return bytes(out + b";")


def gif_of_big_frames(*, comment: bool, count: int = 5, side: int = 6300, plain_text: bool = False) -> bytes:
    """`count` solid `side`x`side` frames; by default five of 6300x6300 (39.7 Mpx each, just under the
    40 Mpx a frame may have): ~156 KB. `plain_text` adds a plain-text block, which the fixed code
    cannot just leave out: it decodes and writes the GIF again (its worst case within the limits)."""
    from PIL import Image

    palette = [c for i in range(256) for c in (i, i * 3 % 256, i * 7 % 256)]
    frames = []
    for colour in range(count):
        frame = Image.new("P", (side, side), colour)
        frame.putpalette(palette)
        frames.append(frame)
    buf = io.BytesIO()
    extra = {"comment": b"hi"} if comment else {}
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    data = buf.getvalue()
    if plain_text:  # before the trailer
        data = data[:-1] + b"!\x01\x0c" + bytes(12) + b"\x01x\x00;"
    return data


def control_jpeg() -> bytes:
    """An ordinary 1000x800 photo-like JPEG (a gradient with noise), quality 90."""
    from PIL import Image

    rng = random.Random(7)
    img = Image.linear_gradient("L").resize((1000, 800)).convert("RGB")
    noise = Image.frombytes("RGB", (1000, 800), rng.randbytes(1000 * 800 * 3))
    buf = io.BytesIO()
    Image.blend(img, noise, 0.2).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def progressive_jpeg() -> bytes:
    """6000x6000 (36 Mpx), progressive, no chroma subsampling: ~0.5 MB."""
    from PIL import Image

    img = Image.linear_gradient("L").resize((6000, 6000)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, subsampling=0, progressive=True)
    return buf.getvalue()


def png_of_many_chunks(count: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    png = buf.getvalue()
    chunk = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz"))
    return png[:33] + chunk * count + png[33:]


def jpeg_of_many_segments(count: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    jpg = buf.getvalue()
    return jpg[:2] + b"\xff\xe9\x00\x02" * count + jpg[2:]


PAYLOADS: dict[str, Callable[[], bytes]] = {
    "big.gif": lambda: gif_of_big_frames(comment=True),
    "many.gif": lambda: gif_of_tiny_frames(100_000, identical=False, comment=True),
    "same.gif": lambda: gif_of_tiny_frames(70_000, identical=True, comment=True),
    "photo.jpg": control_jpeg,
    "allowed.gif": lambda: gif_of_big_frames(comment=True, count=4, side=3150),
    "allowed-text.gif": lambda: gif_of_big_frames(comment=True, count=4, side=3150, plain_text=True),
    "big-plain.gif": lambda: gif_of_big_frames(comment=False),
    "many-plain.gif": lambda: gif_of_tiny_frames(100_000, identical=False, comment=False),
    "progressive.jpg": progressive_jpeg,
    "chunks.png": lambda: png_of_many_chunks(800_000),
    "segments.jpg": lambda: jpeg_of_many_segments(2_500_000),
}
# name -> (description, payload, uploads at once)
CASES: dict[str, tuple[str, str, int]] = {
    "gif-5x6300": ("GIF, 5 frames of 6300x6300, comment", "big.gif", 1),
    "gif-5x6300-x4": ("the same, 4 uploads at once", "big.gif", 4),
    "gif-100k": ("GIF, 100k frames of 1x1, comment", "many.gif", 1),
    "gif-70k-same": ("GIF, 70k identical 1x1 frames, comment", "same.gif", 1),
    "jpeg-control": ("JPEG 1000x800 photo (control)", "photo.jpg", 1),
    "gif-4x3150": ("GIF, 4 frames of 3150x3150 (39.7 Mpx), comment", "allowed.gif", 1),
    "gif-4x3150-text": ("the same + a plain-text block", "allowed-text.gif", 1),
    "gif-4x3150-text-x4": ("the same, 4 uploads at once", "allowed-text.gif", 4),
    "gif-5x6300-plain": ("GIF, 5 frames of 6300x6300, no metadata", "big-plain.gif", 1),
    "gif-100k-plain": ("GIF, 100k frames of 1x1, no metadata", "many-plain.gif", 1),
    "jpeg-progressive-36mpx": ("JPEG 6000x6000 progressive 4:4:4", "progressive.jpg", 1),
    "png-800k-chunks": ("PNG 8x8 + 800k empty unknown chunks", "chunks.png", 1),
    "jpeg-2.5m-segments": ("JPEG 8x8 + 2.5M empty APP9 segments", "segments.jpg", 1),
}
MAIN_CASES = ["gif-5x6300", "gif-5x6300-x4", "gif-100k", "gif-70k-same", "jpeg-control"]


# --- the measured process ------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """VmHWM: this process's RSS high-water mark (ru_maxrss would start at the forking parent's RSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def worker(code: str, payload: Path, filename: str, parallel: int) -> None:
    sys.path.insert(0, code)  # before the editable install's finder
    import httpx
    from PIL import Image

    import c_app
    from c_app.config import Settings
    from c_app.main import create_app

    assert Path(c_app.__file__).resolve().is_relative_to(Path(code).resolve()), c_app.__file__
    data = payload.read_bytes()

    async def run() -> dict[str, object]:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None,
                memory_db_path=f"{tmp}/db.sqlite",
                upload_dir=f"{tmp}/uploads",
                load_sample_kb=False,
                rate_limit_upload="0",
                upload_quota_bytes=0,
            )
            app = create_app(settings)
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                    base_url="http://t",
                    timeout=None,
                ) as client,
            ):

                async def one(i: int) -> httpx.Response:
                    return await client.post(
                        "/api/v1/chat/upload-image",
                        files={"file": (filename, data, "application/octet-stream")},
                        data={"user_id": f"bench-{i}", "session_id": f"s-{i}"},
                    )

                warm = io.BytesIO()
                Image.new("RGB", (8, 8)).save(warm, "PNG")
                await client.post(  # imports, first queries: not part of the figure
                    "/api/v1/chat/upload-image",
                    files={"file": ("warm.png", warm.getvalue(), "image/png")},
                    data={"user_id": "warm", "session_id": "warm"},
                )
                ready = rss_bytes()
                reset_peak_rss()
                # Fast cases are repeated (up to 9 times, while under a second in all) and the median
                # taken: one 20 ms sample on a shared machine is mostly noise. Slow cases run once.
                times: list[float] = []
                while not times or (sum(times) < 1.0 and len(times) < 9):
                    started = time.perf_counter()
                    responses = await asyncio.gather(*(one(i) for i in range(parallel)))
                    times.append(time.perf_counter() - started)
                elapsed = statistics.median(times)
                peak = peak_rss_bytes()
        statuses = [r.status_code for r in responses]
        message = ""
        for r in responses:
            if r.status_code != 200:
                try:
                    message = r.json()["error"]["message"]
                except ValueError:  # not JSON
                    message = r.text[:60]
        return {
            "code": str(Path(c_app.__file__).parent),
            "bytes": len(data),
            "statuses": statuses,
            "message": message,
            "seconds": elapsed,
            "runs": len(times),
            "peak": peak,
            "ready": ready,
        }

    print(json.dumps(asyncio.run(run())))


# --- the driver ----------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--code", default=str(ROOT), help="checkout whose c_app is measured")
    parser.add_argument(
        "--cases", nargs="*", default=None, help=f"default: {' '.join(MAIN_CASES)}; 'all': every case"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument(
        "--worker", nargs=3, metavar=("PAYLOAD", "FILENAME", "PARALLEL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        payload, filename, parallel = args.worker
        worker(args.code, Path(payload), filename, int(parallel))
        return

    names = MAIN_CASES if not args.cases else list(CASES) if args.cases == ["all"] else args.cases
    print(f"code: {Path(args.code).resolve()}  (one fresh process per case, timeout {args.timeout:.0f} s)")
    header = (
        f"{'case':<44} {'size':>9} {'status':<22} {'wall':>8} {'n':>3} {'peak RSS':>10} {'upload cost':>12}"
        "  message"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, Path] = {}
        for name in names:
            description, filename, parallel = CASES[name]
            path = built.get(filename)
            if path is None:
                path = built[filename] = Path(tmp) / filename
                path.write_bytes(PAYLOADS[filename]())
            command = [
                sys.executable,
                __file__,
                "--code",
                args.code,
                "--worker",
                str(path),
                filename,
                str(parallel),
            ]
            try:
                done = subprocess.run(
                    command, check=False, capture_output=True, text=True, timeout=args.timeout
                )
            except subprocess.TimeoutExpired:
                limit = f">{args.timeout:.0f}s"
                print(f"{description:<44} {path.stat().st_size:>9,} {'timeout':<22} {limit:>8}")
                continue
            if done.returncode != 0:
                print(f"{description:<44} {'':>9} worker failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            statuses = ",".join(str(s) for s in r["statuses"])
            print(
                f"{description:<44} {r['bytes']:>9,} {statuses:<22} {r['seconds']:>7.2f}s {r['runs']:>3} "
                f"{mb(r['peak']):>10} {mb(r['peak'] - r['ready']):>12}  {r['message']}"
            )


if __name__ == "__main__":
    main()

"""A real server on a loopback port: the seed's two curl examples, and the wire itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import BACKEND
from .utils import jpeg_bytes, sse_data

ROOT = Path(__file__).resolve().parent.parent

SEED_STREAM = """curl -X POST "http://localhost:8000/api/v1/chat/stream" \\
  -H "Content-Type: application/json" \\
  -d '{
    "user_id": "user123",
    "session_id": "session456",
    "message": {
      "role": "user",
      "content": "我想了解退货政策"
    }
  }'"""

SEED_UPLOAD = """curl -X POST "http://localhost:8000/api/v1/chat/upload-image" \\
  -F "file=@image.jpg" \\
  -F "user_id=user123" \\
  -F "session_id=session456\""""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    if BACKEND != "sqlite":
        pytest.skip("the real-server test runs once, on the embedded default")
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MEMORY_DB_PATH": str(tmp_path / "data" / "customer_service.db"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "LOG_LEVEL": "warning",
    }
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_server.py")], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "server exited"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_seed_curl_examples(server: str, tmp_path: Path) -> None:
    port = server.rsplit(":", 1)[1]
    (tmp_path / "image.jpg").write_bytes(jpeg_bytes((64, 48), (200, 30, 30)))

    stream = subprocess.run(
        ["bash", "-c", SEED_STREAM.replace("localhost:8000", f"localhost:{port}") + " -sS"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = sse_data(stream.stdout)
    assert data[-1] == "[DONE]" and len(data) > 1

    upload = subprocess.run(
        ["bash", "-c", SEED_UPLOAD.replace("localhost:8000", f"localhost:{port}") + " -sS"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    )
    body = httpx.Response(200, content=upload.stdout.encode()).json()
    assert body["success"] is True and body["data"]["content_type"] == "image/jpeg"
    served = httpx.get(server + body["data"]["file_url"])
    assert served.status_code == 200 and served.content == (tmp_path / "image.jpg").read_bytes()


def test_stream_arrives_in_pieces_on_the_wire(server: str) -> None:
    body = {"user_id": "wire", "session_id": "wire-1", "message": {"content": "买东西怎么开发票？"}}
    chunks = []
    with httpx.stream("POST", server + "/api/v1/chat/stream", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line:
                chunks.append(line)
    assert chunks[-1] == "data: [DONE]"
    assert len(chunks) > 3
    session = httpx.get(server + "/api/v1/chat/session/wire-1").json()
    assert session["message_count"] == 2

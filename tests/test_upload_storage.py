"""UPLOAD_STORAGE=s3 against a real S3-compatible server (moto's, a separate process on a loopback port).

Two app instances share one database and one bucket, each with its own UPLOAD_DIR (scratch only):
what replica A stored, replica B serves, exports, erases and purges; the bytes on the wire, the
objects in the bucket and the rows stored are what is asserted. The local default is covered, byte
for byte, by test_uploads.py and test_hardening_uploads.py.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from c_app.db.models import Upload, utcnow

from .servers import free_port
from .utils import assert_envelope, chat_body, count, png_bytes, upload, uploaded

ADMIN = {"Authorization": "Bearer s3-admin"}
KEY = "sk-s3-test"
STREAM = "/api/v1/chat/stream"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server as a separate process; stopped (and waited for) at the end of the module."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )


@pytest.fixture
def bucket(s3_endpoint: str) -> dict[str, Any]:
    """A fresh bucket for the test, and the settings that point the app at it."""
    name = f"c-app-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return {
        "upload_storage": "s3",
        "s3_endpoint_url": s3_endpoint,
        "s3_bucket": name,
        "s3_access_key_id": "test-key",
        "s3_secret_access_key": "test-secret",
        "s3_prefix": "up/",
    }


def objects(bucket: dict[str, Any]) -> dict[str, bytes]:
    """Every object in the bucket: key -> bytes."""
    client = s3_client(bucket["s3_endpoint_url"])
    listed = client.list_objects_v2(Bucket=bucket["s3_bucket"]).get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=bucket["s3_bucket"], Key=item["Key"])["Body"].read()
        for item in listed
    }


def scratch(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
async def two_replicas(start_app: Any, bucket: dict[str, Any], tmp_path: Path) -> Any:
    a = await start_app(upload_dir=str(tmp_path / "a"), admin_token="s3-admin", **bucket)
    b = await start_app(upload_dir=str(tmp_path / "b"), admin_token="s3-admin", **bucket)
    return a, b


async def test_an_upload_through_a_is_served_by_b_from_the_bucket(two_replicas, bucket, tmp_path) -> None:
    (_, a), (app_b, b) = two_replicas
    data = png_bytes((48, 32))
    body = await uploaded(a, data, "收据.png")
    name = body["filename"]
    assert objects(bucket) == {f"up/{name}": data}  # a clean PNG is kept byte for byte
    assert scratch(tmp_path / "a") == [] and scratch(tmp_path / "b") == []  # no file left on either disk

    shown = await b.get(body["file_url"])
    assert shown.status_code == 200
    assert shown.content == data
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["content-length"] == str(len(data))
    assert shown.headers["cache-control"] == "private, max-age=3600"
    assert "content-disposition" not in shown.headers

    downloaded = await b.get(f"/download/{name}")
    assert downloaded.status_code == 200
    assert downloaded.content == data
    assert downloaded.headers["content-type"] == "application/octet-stream"
    assert downloaded.headers["content-disposition"] == "attachment; filename*=utf-8''%E6%94%B6%E6%8D%AE.png"
    assert await count(app_b, Upload) == 1

    # A row whose object is gone is not found, on either replica, with the seed's envelope.
    s3_client(bucket["s3_endpoint_url"]).delete_object(Bucket=bucket["s3_bucket"], Key=f"up/{name}")
    for client in (a, b):
        assert_envelope(await client.get(f"/download/{name}"), 404, message="文件不存在")


async def test_a_refused_image_leaves_no_object_and_no_row(two_replicas, bucket, tmp_path) -> None:
    (app_a, a), _ = two_replicas
    assert_envelope(await upload(a, b"not an image at all", "x.png"), 400)
    assert objects(bucket) == {}
    assert await count(app_a, Upload) == 0
    assert scratch(tmp_path / "a") == []


async def test_the_quota_holds_across_replicas(start_app, bucket, tmp_path) -> None:
    data = png_bytes((40, 40))
    quota = {"upload_quota_bytes": len(data) + len(data) // 2, "admin_token": "s3-admin", **bucket}
    _, a = await start_app(upload_dir=str(tmp_path / "a"), **quota)
    app_b, b = await start_app(upload_dir=str(tmp_path / "b"), **quota)
    await uploaded(a, data)
    refused = await upload(b, data)
    assert_envelope(refused, 413)
    assert len(objects(bucket)) == 1
    assert await count(app_b, Upload) == 1


async def test_export_and_erasure_through_b_reach_the_objects_a_stored(two_replicas, bucket) -> None:
    (_, a), (_, b) = two_replicas
    data = png_bytes((20, 20), color=(200, 10, 10))
    name = (await uploaded(a, data, user_id="erased-user"))["filename"]
    kept = (await uploaded(a, png_bytes(), user_id="other-user", session_id="s2"))["filename"]

    exported = await b.get("/api/v1/admin/customers/erased-user/export", headers=ADMIN)
    assert exported.status_code == 200
    with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
        assert archive.read(f"uploads/{name}") == data
        assert archive.getinfo(f"uploads/{name}").compress_type == zipfile.ZIP_STORED

    erased = await b.delete("/api/v1/admin/customers/erased-user", headers=ADMIN)
    assert erased.status_code == 200, erased.text
    assert erased.json()["data"]["uploads"] == 1
    assert erased.json()["data"]["upload_files"] == 1
    assert set(objects(bucket)) == {f"up/{kept}"}
    again = await a.delete("/api/v1/admin/customers/erased-user", headers=ADMIN)
    assert again.json()["data"]["upload_files"] == 0


async def test_retention_removes_the_objects_of_old_uploads(two_replicas, bucket) -> None:
    (_, a), (app_b, _) = two_replicas
    name = (await uploaded(a, png_bytes()))["filename"]
    services = app_b.state.services
    services.settings.retention_days = 30
    run = await services.retention.run_once(now=utcnow() + timedelta(days=31))
    assert (run.uploads, run.upload_files) == (1, 1)
    assert objects(bucket) == {}
    assert await count(app_b, Upload) == 0
    assert f"up/{name}" not in objects(bucket)


async def test_the_model_gets_an_upload_stored_by_the_other_replica(start_app, standin, bucket, tmp_path):
    _, a = await start_app(upload_dir=str(tmp_path / "a"), **bucket)
    _, b = await start_app(
        upload_dir=str(tmp_path / "b"), llm_api_key=KEY, llm_base_url=standin.base_url, **bucket
    )
    data = png_bytes((30, 30), color=(1, 2, 3))
    url = (await uploaded(a, data))["file_url"]
    standin.script.append({"kind": "stream", "text": "看到了。"})
    parts = [{"type": "text", "text": "这个坏了"}, {"type": "image_url", "image_url": {"url": url}}]
    response = await b.post(STREAM, json=chat_body(parts))
    assert response.status_code == 200
    image = standin.requests[0]["messages"][-1]["content"][1]["image_url"]["url"]
    assert image == "data:image/png;base64," + base64.b64encode(data).decode()


async def test_a_missing_bucket_is_a_clear_error_not_a_stored_row(start_app, s3_endpoint, tmp_path) -> None:
    settings = {
        "upload_storage": "s3",
        "s3_endpoint_url": s3_endpoint,
        "s3_bucket": "no-such-bucket-here",
        "s3_access_key_id": "k",
        "s3_secret_access_key": "s",
    }
    app, client = await start_app(upload_dir=str(tmp_path / "a"), **settings)
    response = await upload(client, png_bytes())
    assert_envelope(response, 503)
    assert await count(app, Upload) == 0
    with pytest.raises(ClientError):
        s3_client(s3_endpoint).head_bucket(Bucket="no-such-bucket-here")

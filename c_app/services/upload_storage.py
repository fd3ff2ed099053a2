"""Where upload files live, by key (the stored name): the local folder, or an S3-compatible bucket.

UPLOAD_STORAGE=local (the default): files in UPLOAD_DIR, exactly as before; the routes serve them
with FileResponse (sendfile, Content-Length, ETag, ranges), so a single machine behaves byte for
byte as it always has. UPLOAD_STORAGE=s3: objects under S3_PREFIX in S3_BUCKET at S3_ENDPOINT_URL
(AWS, MinIO, Ceph, R2...), so every replica reads what any replica stored. UPLOAD_DIR then only
holds scratch files (an upload being checked, an export being built).

The S3 client is boto3's, its blocking calls run in worker threads (as the app's other file I/O):
boto3 is the reference client, thread-safe, does multipart uploads by itself, and pins nothing of
ours; aiobotocore would pin botocore to one exact version and bring aiohttp beside httpx.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import anyio

from ..config import Settings
from ..errors import ServiceUnavailable

logger = logging.getLogger(__name__)
UNAVAILABLE = "文件存储暂不可用，请稍后再试"

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class StoredStream:
    """A stored file being read: its size in bytes, and its bytes in chunks (closed when exhausted)."""

    size: int
    chunks: AsyncIterator[bytes]


class UploadStorage(Protocol):
    """Files by key. Keys are our stored names (checked by the caller): no paths, no slashes."""

    async def put(self, key: str, source: Path, content_type: str) -> None:
        """Store the file at `source` under `key` (`source` is consumed: moved or removed)."""

    async def get(self, key: str) -> bytes: ...

    async def stream(self, key: str) -> StoredStream: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> bool:
        """Remove the file; False when there was none."""

    def local_path(self, key: str) -> Path | None:
        """The file on this machine's disk, when the storage is a local folder (served with sendfile)."""


class LocalStorage:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key: str) -> Path:
        return self.directory / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def put(self, key: str, source: Path, content_type: str) -> None:
        os.replace(source, self._path(key))  # same folder: atomic, no copy

    async def get(self, key: str) -> bytes:
        return await anyio.Path(self._path(key)).read_bytes()

    async def stream(self, key: str) -> StoredStream:
        handle = await anyio.open_file(self._path(key), "rb")
        size = os.fstat(handle.wrapped.fileno()).st_size

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await handle.read(CHUNK):
                    yield chunk
            finally:
                await handle.aclose()

        return StoredStream(size, chunks())

    async def exists(self, key: str) -> bool:
        return await anyio.Path(self._path(key)).is_file()

    async def delete(self, key: str) -> bool:
        try:
            await anyio.Path(self._path(key)).unlink()
        except FileNotFoundError:
            return False
        return True


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        if not settings.s3_bucket:
            raise ValueError("UPLOAD_STORAGE=s3 needs S3_BUCKET")
        secret = settings.s3_secret_access_key
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
                # Path-style addressing works with every S3-compatible server (virtual hosts need DNS).
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, key: str) -> str:
        return self.prefix + key

    def local_path(self, key: str) -> Path | None:
        return None

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A client call in a worker thread. A missing key is FileNotFoundError (as a local file);
        any other failure of the store (unreachable, no such bucket, refused credentials) is a 503."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await anyio.to_thread.run_sync(partial(getattr(self.client, method), *args, **kwargs))
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(kwargs.get("Key")) from None
            logger.warning("object storage %s failed: %s", method, exc)
            raise ServiceUnavailable(UNAVAILABLE) from None
        except (BotoCoreError, Boto3Error) as exc:
            logger.warning("object storage %s failed: %s: %s", method, type(exc).__name__, exc)
            raise ServiceUnavailable(UNAVAILABLE) from None

    async def put(self, key: str, source: Path, content_type: str) -> None:
        try:
            await self._call(
                "upload_file",
                str(source),
                self.bucket,
                self._key(key),
                ExtraArgs={"ContentType": content_type},
            )
        finally:
            source.unlink(missing_ok=True)

    async def get(self, key: str) -> bytes:
        response = await self._call("get_object", Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]
        try:
            return bytes(await anyio.to_thread.run_sync(body.read))
        finally:
            body.close()

    async def stream(self, key: str) -> StoredStream:
        response = await self._call("get_object", Bucket=self.bucket, Key=self._key(key))
        body = response["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await anyio.to_thread.run_sync(body.read, CHUNK):
                    yield chunk
            finally:
                body.close()

        return StoredStream(int(response["ContentLength"]), chunks())

    async def exists(self, key: str) -> bool:
        try:
            await self._call("head_object", Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        return True

    async def delete(self, key: str) -> bool:
        # S3 answers a delete of a missing key with success: asked first, so counts stay true.
        if not await self.exists(key):
            return False
        await self._call("delete_object", Bucket=self.bucket, Key=self._key(key))
        return True


def _missing(exc: Any) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def build_storage(settings: Settings, directory: Path) -> UploadStorage:
    if settings.upload_storage == "s3":
        return S3Storage(settings)
    return LocalStorage(directory)

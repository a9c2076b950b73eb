"""Objects in an S3-compatible bucket (AWS S3, Tencent COS, ...) through aiobotocore.

Everything is async, so an upload never blocks the worker's event loop; file reads and
writes of multi-MB chunks run in a thread. One client per S3Storage, made on first use
inside the running loop (an aiobotocore client belongs to the loop that made it) and
released by close().

Files above S3_MULTIPART_THRESHOLD_BYTES go up as a multipart upload in parts of that
size; a failed one is aborted so no orphan parts are billed. A bucket lifecycle rule
(AbortIncompleteMultipartUpload) is still worth having for a process killed mid-upload.

Tencent COS: S3_ENDPOINT_URL=https://cos.<region>.myqcloud.com, S3_REGION=<region>,
S3_BUCKET=<name>-<appid>, S3_ADDRESSING_STYLE=virtual (with a custom endpoint botocore
treats "auto" as path style, which COS refuses).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import mimetypes
import os
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp.abc import AbstractResolver
from botocore.exceptions import BotoCoreError, ClientError

from service import errors
from service.settings import Settings

logger = logging.getLogger(__name__)

# S3 allows at most this many parts in one multipart upload.
_MAX_PARTS = 10_000
# Chunk of a download written to disk per thread hop.
_DOWNLOAD_CHUNK = 1024 * 1024
# Codes S3-compatible servers answer for a missing object (HEAD has no body, hence "404").
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
# What a network, protocol or local-file failure can raise; all become StorageError.
_FAILURES = (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError, OSError)


class S3Storage:
    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        region: str = "us-east-1",
        endpoint_url: str = "",
        prefix: str = "",
        public_base_url: str = "",
        presign_ttl_s: int = 3600,
        addressing_style: str = "auto",
        multipart_threshold_bytes: int = 8 * 1024 * 1024,
        access_key_id: str = "",
        secret_access_key: str = "",
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 5,
        resolver: AbstractResolver | None = None,
    ) -> None:
        if bool(access_key_id) != bool(secret_access_key):
            raise errors.ConfigError(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.prefix = _normalize_prefix(prefix)
        self.public_base_url = public_base_url.rstrip("/")
        # A CDN URL is permanent; a presigned one dies after presign_ttl_s.
        self.urls_expire = not self.public_base_url
        self.presign_ttl_s = presign_ttl_s
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self._credentials = (
            {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
            if access_key_id else {}  # empty: botocore's chain (env, ~/.aws, instance role)
        )
        self._config = AioConfig(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # A PUT of the same key is idempotent, and so is an UploadPart of the same
            # number, so retrying throttles, 5xx and dropped connections is safe.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            # botocore >= 1.36 sends CRC trailers by default, which S3-compatible servers
            # (Tencent COS among them) reject; put sends Content-MD5 instead.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # A resolver: for tests that serve virtual-host buckets on loopback.
            **({"connector_args": {"resolver": resolver}} if resolver else {}),
        )
        self._session = get_session()
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        return cls(
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            endpoint_url=settings.s3_endpoint_url,
            prefix=settings.s3_prefix,
            public_base_url=settings.s3_public_base_url,
            presign_ttl_s=settings.s3_presign_ttl_s,
            addressing_style=settings.s3_addressing_style,
            multipart_threshold_bytes=settings.s3_multipart_threshold_bytes,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
        )

    def object_key(self, key: str) -> str:
        """The key in the bucket: the prefix, then the service's key."""
        # "." and ".." would be normalized away by a CDN or browser: another object.
        if not key or any(part in ("", ".", "..") for part in key.split("/")):
            raise errors.StorageError(f"object key {key!r} is not a plain relative path")
        return self.prefix + key

    async def put(self, key: str, source: Path) -> None:
        object_key = self.object_key(key)
        try:
            client = await self._get_client()
            size = source.stat().st_size
            content_type = _content_type(key)
            if size > self.multipart_threshold_bytes:
                await self._put_multipart(client, object_key, source, size, content_type)
            else:
                body, md5 = await asyncio.to_thread(_read_chunk, source, 0, size)
                _check_length(source, body, size)
                await client.put_object(Bucket=self.bucket, Key=object_key, Body=body,
                                        ContentType=content_type, ContentMD5=md5)
        except _FAILURES as exc:
            raise self._error("store", object_key, exc) from exc

    async def _put_multipart(self, client: Any, object_key: str, source: Path, size: int,
                             content_type: str) -> None:
        # Parts grow past the threshold only for files that would need > 10,000 parts.
        part_size = max(self.multipart_threshold_bytes, math.ceil(size / _MAX_PARTS))
        created = await client.create_multipart_upload(
            Bucket=self.bucket, Key=object_key, ContentType=content_type)
        upload_id = created["UploadId"]
        try:
            parts = []
            for number, offset in enumerate(range(0, size, part_size), start=1):
                body, md5 = await asyncio.to_thread(_read_chunk, source, offset, part_size)
                _check_length(source, body, min(part_size, size - offset))
                uploaded = await client.upload_part(
                    Bucket=self.bucket, Key=object_key, UploadId=upload_id, PartNumber=number,
                    Body=body, ContentMD5=md5)
                parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except BaseException:
            # Also on cancellation (worker shutdown): the parts stored so far cost money.
            await self._abort(client, object_key, upload_id)
            raise

    async def _abort(self, client: Any, object_key: str, upload_id: str) -> None:
        try:
            await client.abort_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        except _FAILURES as exc:
            # The original error is the one to report; a lifecycle rule cleans this up.
            logger.warning("could not abort the multipart upload of s3://%s/%s: %s",
                           self.bucket, object_key, _describe(exc))

    async def get(self, key: str, dest: Path) -> None:
        object_key = self.object_key(key)
        # In dest's directory, so os.replace is an atomic rename on the same file system.
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            client = await self._get_client()
            response = await client.get_object(Bucket=self.bucket, Key=object_key)
            async with response["Body"] as body:
                out = await asyncio.to_thread(_open_for_write, tmp)
                try:
                    async for chunk in body.iter_chunks(_DOWNLOAD_CHUNK):
                        await asyncio.to_thread(out.write, chunk)
                finally:
                    await asyncio.to_thread(out.close)
            # Readers see no file or the whole object, never half of one.
            os.replace(tmp, dest)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise errors.StorageError(
                    f"object s3://{self.bucket}/{object_key} does not exist") from exc
            raise self._error("read", object_key, exc) from exc
        except _FAILURES as exc:
            raise self._error("read", object_key, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)

    async def url(self, key: str) -> str:
        object_key = self.object_key(key)
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(object_key, safe='/')}"
        try:
            client = await self._get_client()
            # Signing is local (no request); it fails only without credentials.
            return await client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": object_key},
                ExpiresIn=self.presign_ttl_s)
        except _FAILURES as exc:
            raise self._error("sign a URL for", object_key, exc) from exc

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _get_client(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    self._client = await stack.enter_async_context(self._session.create_client(
                        "s3", endpoint_url=self.endpoint_url or None, config=self._config,
                        **self._credentials))
                    self._stack = stack
        return self._client

    def _error(self, action: str, object_key: str, exc: BaseException) -> errors.StorageError:
        # Never str(exc): a server's error body may echo the signature or the access key.
        return errors.StorageError(
            f"could not {action} s3://{self.bucket}/{object_key}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{_code(exc)} (HTTP {status})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "unknown"))


def _normalize_prefix(prefix: str) -> str:
    # "video-tasks" and "/video-tasks/" both mean the folder video-tasks/.
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _content_type(key: str) -> str:
    if key.endswith(".mp4"):
        # The mini-program's <video> needs it; mimetypes may not know .mp4 on slim images.
        return "video/mp4"
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def _read_chunk(path: Path, offset: int, size: int) -> tuple[bytes, str]:
    """Up to size bytes of path from offset, and their Content-MD5 (base64 MD5)."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read(size)
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return data, base64.b64encode(digest).decode("ascii")


def _check_length(source: Path, body: bytes, expected: int) -> None:
    # A file rewritten while it is uploaded must not be stored as a truncated video.
    if len(body) != expected:
        raise errors.StorageError(f"{source.name} changed size while it was being stored")


def _open_for_write(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")

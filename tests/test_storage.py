"""Storage backends: S3Storage against a real moto server on loopback, and LocalStorage.

No database: these tests build Settings directly and use none of conftest's fixtures.

What moto (5.2.5) does not check, so these tests cannot: the expiry and the signature of
presigned URLs (an expired or tampered one is still served); header signatures only while
`enforce_auth` is on (the wrong-secret test). Virtual-host addressing is real here: a
resolver sends <bucket>.localhost to loopback and moto takes the bucket from the Host.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from service import errors, storage
from service.settings import Settings
from service.storage import LocalStorage
from service.storage.s3 import S3Storage
from tests.fakes.s3 import MotoS3, running_moto

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    # moto's state is per process: a bucket of our own keeps other users of moto apart.
    with running_moto(bucket=f"storage-test-{uuid.uuid4().hex[:8]}") as server:
        yield server


def make_storage(moto: MotoS3, **overrides: Any) -> S3Storage:
    built = storage.from_settings(Settings(**{**moto.settings_overrides(), **overrides}))
    assert isinstance(built, S3Storage)
    return built


@pytest.fixture
async def s3(moto: MotoS3) -> AsyncIterator[S3Storage]:
    backend = make_storage(moto)
    yield backend
    await backend.close()


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def unique_key(name: str = "clip.mp4") -> str:
    return f"videos/{uuid.uuid4()}/{name}"


async def test_put_then_get_gives_the_same_bytes(s3: S3Storage, moto: MotoS3,
                                                 tmp_path: Path) -> None:
    data = write_random(tmp_path / "in.mp4", 300 * 1024)
    key = unique_key()
    await s3.put(key, tmp_path / "in.mp4")
    await s3.get(key, tmp_path / "out" / "out.mp4")
    assert (tmp_path / "out" / "out.mp4").read_bytes() == data
    # get leaves no temp file next to dest.
    assert os.listdir(tmp_path / "out") == ["out.mp4"]
    head = moto.client().head_object(Bucket=moto.bucket, Key=key)
    assert head["ContentType"] == "video/mp4"
    assert "-" not in head["ETag"]  # a single PUT


async def test_put_of_the_same_key_twice_keeps_one_object_with_new_bytes(
        s3: S3Storage, moto: MotoS3, tmp_path: Path) -> None:
    key = unique_key()
    write_random(tmp_path / "first.mp4", 1000)
    second = write_random(tmp_path / "second.mp4", 2000)
    await s3.put(key, tmp_path / "first.mp4")
    await s3.put(key, tmp_path / "second.mp4")
    listed = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix=key)
    assert [obj["Key"] for obj in listed["Contents"]] == [key]
    await s3.get(key, tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == second


async def test_a_file_above_the_threshold_goes_up_in_parts(
        moto: MotoS3, tmp_path: Path) -> None:
    backend = make_storage(moto, s3_multipart_threshold_bytes=5 * MIB)
    data = write_random(tmp_path / "big.mp4", 11 * MIB)
    key = unique_key()
    try:
        await backend.put(key, tmp_path / "big.mp4")
        await backend.get(key, tmp_path / "out.mp4")
    finally:
        await backend.close()
    assert (tmp_path / "out.mp4").read_bytes() == data
    client = moto.client()
    # The server's view: a multipart ETag ends in -<parts>; 5 + 5 + 1 MiB.
    head = client.head_object(Bucket=moto.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentType"] == "video/mp4"
    assert client.head_object(Bucket=moto.bucket, Key=key, PartNumber=1)["PartsCount"] == 3
    assert not client.list_multipart_uploads(Bucket=moto.bucket).get("Uploads")


async def test_a_failed_multipart_upload_is_aborted(moto: MotoS3, tmp_path: Path) -> None:
    backend = make_storage(moto, s3_multipart_threshold_bytes=5 * MIB)
    source = tmp_path / "big.mp4"
    write_random(source, 11 * MIB)
    key = unique_key()
    try:
        await backend.url(key)  # makes the client, so put's first await is the network
        task = asyncio.create_task(backend.put(key, source))
        # One loop turn: put has measured the file and sent CreateMultipartUpload.
        await asyncio.sleep(0)
        # Now the file shrinks: part 1 goes up whole, part 2 comes up short.
        os.truncate(source, 6 * MIB)
        with pytest.raises(errors.StorageError, match="changed size"):
            await task
    finally:
        await backend.close()
    client = moto.client()
    assert not client.list_multipart_uploads(Bucket=moto.bucket).get("Uploads")
    assert "Contents" not in client.list_objects_v2(Bucket=moto.bucket, Prefix=key)


async def test_presigned_url_serves_the_bytes_over_http(s3: S3Storage, tmp_path: Path) -> None:
    data = write_random(tmp_path / "in.mp4", 64 * 1024)
    key = unique_key()
    await s3.put(key, tmp_path / "in.mp4")
    assert s3.urls_expire is True
    url = await s3.url(key)
    # encoded=True: aiohttp must send the signed query exactly as signed.
    async with aiohttp.ClientSession() as http, http.get(URL(url, encoded=True)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "video/mp4"
        assert await response.read() == data


async def test_presigned_url_carries_the_configured_lifetime(moto: MotoS3) -> None:
    # moto serves expired presigned URLs (checked by hand: still 200 after the TTL), so
    # the expiry is checked on the URL itself: SigV4, signed now, valid for the TTL.
    backend = make_storage(moto, s3_presign_ttl_s=2)
    try:
        query = parse_qs(urlsplit(await backend.url(unique_key())).query)
    finally:
        await backend.close()
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["2"]
    signed_at = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
    assert abs(signed_at - time.mktime(time.gmtime())) < 60
    assert query["X-Amz-Credential"][0].endswith(f"/{moto.region}/s3/aws4_request")


async def test_public_base_url_gives_permanent_cdn_urls(moto: MotoS3) -> None:
    backend = make_storage(moto, s3_public_base_url="https://cdn.example.com/",
                           s3_prefix="video-tasks/")
    try:
        assert backend.urls_expire is False
        assert (await backend.url("videos/abc.mp4")
                == "https://cdn.example.com/video-tasks/videos/abc.mp4")
    finally:
        await backend.close()


async def test_prefix_is_applied_to_stored_keys(moto: MotoS3, tmp_path: Path) -> None:
    prefix = f"tenant-{uuid.uuid4().hex[:8]}"  # no slash: one is added
    backend = make_storage(moto, s3_prefix=prefix)
    data = write_random(tmp_path / "in.mp4", 1000)
    try:
        await backend.put("videos/a.mp4", tmp_path / "in.mp4")
        await backend.get("videos/a.mp4", tmp_path / "out.mp4")
    finally:
        await backend.close()
    assert (tmp_path / "out.mp4").read_bytes() == data
    listed = moto.client().list_objects_v2(Bucket=moto.bucket, Prefix=prefix)
    assert [obj["Key"] for obj in listed["Contents"]] == [f"{prefix}/videos/a.mp4"]


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1 and remembers the names: <bucket>.localhost does
    not resolve on this host, and the names show which addressing style was used."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.names.add(host)
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port,
                              family=socket.AF_INET, proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(("style", "expected_host"), [
    ("path", "localhost"),
    ("virtual", "{bucket}.localhost"),
])
async def test_addressing_styles_work_against_moto(
        moto: MotoS3, tmp_path: Path, style: str, expected_host: str) -> None:
    resolver = LoopbackResolver()
    backend = S3Storage(
        bucket=moto.bucket, region=moto.region,
        endpoint_url=moto.endpoint_url.replace("127.0.0.1", "localhost"),
        addressing_style=style, access_key_id=moto.access_key_id,
        secret_access_key=moto.secret_access_key, resolver=resolver)
    data = write_random(tmp_path / "in.mp4", 4096)
    key = unique_key()
    try:
        await backend.put(key, tmp_path / "in.mp4")
        await backend.get(key, tmp_path / "out.mp4")
        url = await backend.url(key)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) \
                as http, http.get(URL(url, encoded=True)) as response:
            assert response.status == 200
            assert await response.read() == data
    finally:
        await backend.close()
    assert (tmp_path / "out.mp4").read_bytes() == data
    assert resolver.names == {expected_host.format(bucket=moto.bucket)}
    # Stored under the plain key either way (moto took the bucket from the Host header).
    moto.client().head_object(Bucket=moto.bucket, Key=key)


async def test_virtual_style_against_an_ip_endpoint_falls_back_to_path(
        moto: MotoS3, tmp_path: Path) -> None:
    # An IP has no subdomains: botocore silently addresses by path (what the fake's
    # 127.0.0.1 endpoint gives a worker configured like Tencent COS).
    backend = make_storage(moto, s3_addressing_style="virtual")
    data = write_random(tmp_path / "in.mp4", 1000)
    key = unique_key()
    try:
        await backend.put(key, tmp_path / "in.mp4")
        await backend.get(key, tmp_path / "out.mp4")
        assert urlsplit(await backend.url(key)).path == f"/{moto.bucket}/{key}"
    finally:
        await backend.close()
    assert (tmp_path / "out.mp4").read_bytes() == data


async def test_get_of_a_missing_key_raises_storage_error(s3: S3Storage,
                                                         tmp_path: Path) -> None:
    with pytest.raises(errors.StorageError, match="does not exist"):
        await s3.get(unique_key(), tmp_path / "out.mp4")
    assert os.listdir(tmp_path) == []


async def test_keys_with_dot_segments_are_refused(s3: S3Storage, tmp_path: Path) -> None:
    (tmp_path / "in.mp4").write_bytes(b"x")
    for key in ("videos/../secret.mp4", "/videos/a.mp4", "videos//a.mp4", ""):
        with pytest.raises(errors.StorageError, match="plain relative path"):
            await s3.put(key, tmp_path / "in.mp4")


async def test_a_wrong_secret_key_gives_a_storage_error_without_secrets(
        moto: MotoS3, tmp_path: Path) -> None:
    (tmp_path / "in.mp4").write_bytes(b"video")
    key = unique_key()
    with moto.enforce_auth() as (key_id, secret):
        good = make_storage(moto, aws_access_key_id=key_id, aws_secret_access_key=secret)
        wrong_secret = "wrong" + secret
        bad = make_storage(moto, aws_access_key_id=key_id, aws_secret_access_key=wrong_secret)
        try:
            await good.put(key, tmp_path / "in.mp4")  # the key itself is fine
            failures = []
            for attempt in (bad.put(key, tmp_path / "in.mp4"),
                            bad.get(key, tmp_path / "out.mp4")):
                with pytest.raises(errors.StorageError) as caught:
                    await attempt
                failures.append(caught.value)
        finally:
            await good.close()
            await bad.close()
    for failure in failures:
        assert "SignatureDoesNotMatch" in str(failure)
        # Neither the message nor the chained botocore error (what a log's traceback
        # shows) has a secret or a SigV4 signature (64 hex digits) in it.
        shown = "".join(traceback.format_exception(failure))
        assert secret not in shown and wrong_secret not in shown
        assert not re.search(r"\b[0-9a-f]{64}\b", shown)


async def test_local_storage_round_trip_and_url(tmp_path: Path) -> None:
    local = LocalStorage(media_dir=tmp_path / "media", public_base_url="http://api.test/")
    assert local.urls_expire is False
    (tmp_path / "in.mp4").write_bytes(b"local video")
    await local.put("videos/t.mp4", tmp_path / "in.mp4")
    await local.get("videos/t.mp4", tmp_path / "out.mp4")
    assert (tmp_path / "out.mp4").read_bytes() == b"local video"
    assert (tmp_path / "media" / "videos" / "t.mp4").read_bytes() == b"local video"
    assert await local.url("videos/t.mp4") == "http://api.test/media/videos/t.mp4"
    await local.close()


async def test_local_storage_refuses_keys_that_leave_the_media_dir(tmp_path: Path) -> None:
    local = LocalStorage(media_dir=tmp_path / "media", public_base_url="http://api.test")
    (tmp_path / "in.mp4").write_bytes(b"x")
    with pytest.raises(errors.StorageError, match="leaves the media directory"):
        await local.put("../escaped.mp4", tmp_path / "in.mp4")
    with pytest.raises(errors.StorageError, match="leaves the media directory"):
        await local.get("videos/../../escaped.mp4", tmp_path / "out.mp4")
    assert not (tmp_path / "escaped.mp4").exists()

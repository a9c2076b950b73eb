"""An S3 server for tests and local development: moto in server mode on loopback.

From a (sync) pytest session fixture, e.g. in tests/conftest.py::

    from tests.fakes.s3 import MotoS3, running_moto

    @pytest.fixture(scope="session")
    def s3() -> Iterator[MotoS3]:
        with running_moto(bucket="videos") as server:
            yield server

    # In-process: Settings field names (storage_backend="s3", s3_endpoint_url, ...).
    settings = Settings(**{**other_fields, **s3.settings_overrides()})
    # Worker subprocesses: the same as STORAGE_BACKEND, S3_*, AWS_* variables.
    env = {**os.environ, **s3.env()}
    # The server's side of things (list, head) with a plain sync boto3 client.
    s3.client().list_objects_v2(Bucket=s3.bucket)

For a developer, in its own terminal (binds 127.0.0.1 only; Ctrl-C stops it)::

    .venv/bin/python -m tests.fakes.s3 --port 9000 --bucket videos

It prints the environment variables to export for `make run`.

moto keeps its state in module globals, so every moto server in one process sees the same
buckets (and the same auth switch, see `enforce_auth`). Use a distinct bucket name per user
of the server; nothing here resets moto's state on exit, so a shared session server survives.
What moto (5.2.5) does not enforce: the expiry of presigned URLs or their signatures (an
expired or tampered one is served; under enforce_auth moto answers 500 to any presigned
URL), and header signatures unless `enforce_auth` is on. It does enforce the 5 MiB
minimum of non-final multipart parts (EntityTooSmall on complete).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

# moto accepts any credentials until enforce_auth is on; these are the conventional ones.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


@dataclass(frozen=True)
class MotoS3:
    endpoint_url: str
    bucket: str
    region: str
    access_key_id: str
    secret_access_key: str

    def settings_overrides(self) -> dict[str, Any]:
        """Settings field names to values that point STORAGE_BACKEND=s3 at this server."""
        return {
            "storage_backend": "s3",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_bucket": self.bucket,
            # A virtual host under 127.0.0.1 does not resolve.
            "s3_addressing_style": "path",
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }

    def env(self) -> dict[str, str]:
        """The same as environment variables, for worker subprocesses (Settings.from_env)."""
        return {name.upper(): str(value) for name, value in self.settings_overrides().items()}

    def client(self, **config: Any) -> Any:
        """A plain sync boto3 S3 client, to look at the bucket from the server's side."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    @contextmanager
    def enforce_auth(self) -> Iterator[tuple[str, str]]:
        """Make moto check signatures and IAM policies; yields (key id, secret) of an IAM
        user allowed s3:*. Process-wide while it lasts: other clients of any moto server in
        this process must sign with a real IAM key too."""
        iam = boto3.client(
            "iam", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
        )
        user = f"storage-test-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        previous = self._reset_auth("0")
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self._reset_auth(previous)

    def _reset_auth(self, count: str) -> str:
        """Set moto's INITIAL_NO_AUTH_ACTION_COUNT ("inf": no auth); returns the old one."""
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth", data=count.encode(), method="POST",
            # Not a form: werkzeug would parse a form body away from request.data.
            headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]


@contextmanager
def running_moto(*, bucket: str = "videos", region: str = "us-east-1", port: int = 0,
                 log_requests: bool = False) -> Iterator[MotoS3]:
    """Start moto on 127.0.0.1 (port 0: a free one, picked by the OS without a race),
    create the bucket, and stop the server on exit."""
    # werkzeug logs every request at INFO: useful by hand, noise in test output.
    logging.getLogger("werkzeug").setLevel(logging.INFO if log_requests else logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound_port = server.get_host_and_port()
        s3 = MotoS3(endpoint_url=f"http://{host}:{bound_port}", bucket=bucket, region=region,
                    access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY)
        create_bucket(s3)
        yield s3
    finally:
        server.stop()


def create_bucket(s3: MotoS3) -> None:
    client = s3.client()
    # Outside us-east-1 S3 wants the region spelled out again.
    extra = ({} if s3.region == "us-east-1"
             else {"CreateBucketConfiguration": {"LocationConstraint": s3.region}})
    try:
        client.create_bucket(Bucket=s3.bucket, **extra)
    except client.exceptions.BucketAlreadyOwnedByYou:
        # moto's state is per process: another server in this process made it already.
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", default="videos")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    with running_moto(bucket=args.bucket, region=args.region, port=args.port,
                      log_requests=True) as s3:
        for name, value in s3.env().items():
            print(f"export {name}={value}")
        print(f"# moto S3 on {s3.endpoint_url}, bucket {s3.bucket}; Ctrl-C stops it", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()

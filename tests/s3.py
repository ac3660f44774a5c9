"""An S3-compatible server on 127.0.0.1 for the test session, reached through S3A.

:func:`s3_bucket` (session-scoped) starts ``moto_server`` (the ``moto[server]`` package of
the dev extras) on a free port in its own process group, creates one bucket, and points
S3A at it on the test SparkSession with per-bucket keys (``fs.s3a.bucket.<bucket>.*``),
so no other ``s3a://`` setting of the session changes. The server is stopped by PID when
the test session ends, also when a test or the start-up failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from pyspark.sql import SparkSession
from standalone import free_ports, log_tail, stop_process_groups

__all__ = ["S3Bucket", "s3_bucket"]

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
START_TIMEOUT_S = 60.0
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on the test server: ``url("a/b")`` is ``s3a://<bucket>/a/b``."""

    name: str
    endpoint: str

    def url(self, key: str = "") -> str:
        return f"s3a://{self.name}/{key}".rstrip("/")

    def client(self) -> object:
        """A boto3 S3 client of the server (for checks that bypass S3A)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )


def s3a_settings(bucket: str, endpoint: str) -> dict[str, str]:
    """The Hadoop settings that point S3A's bucket ``bucket`` at ``endpoint``."""
    return {
        f"fs.s3a.bucket.{bucket}.{key}": value
        for key, value in {
            "endpoint": endpoint,
            "endpoint.region": REGION,
            "path.style.access": "true",
            "connection.ssl.enabled": "false",
            "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
            "access.key": ACCESS_KEY,
            "secret.key": SECRET_KEY,
            # A local server answers at once: fail fast instead of retrying for minutes.
            "attempts.maximum": "2",
            "retry.limit": "2",
        }.items()
    }


def _wait_until_up(bucket: S3Bucket, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    client = bucket.client()
    while True:
        try:
            client.list_buckets()  # type: ignore[attr-defined]
            return
        except Exception as error:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"moto_server did not answer on {bucket.endpoint} ({error}); "
                    f"log:\n{log_tail(log)}"
                ) from error
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_bucket(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Bucket]:
    """A fresh bucket on a moto S3 server, configured for S3A on the test session."""
    workdir = tmp_path_factory.mktemp("moto")
    log = workdir / "moto.log"
    (port,) = free_ports(1)
    bucket = S3Bucket(f"sparkml-test-{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:{port}")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    settings = s3a_settings(bucket.name, bucket.endpoint)
    try:
        _wait_until_up(bucket, process, log)
        bucket.client().create_bucket(Bucket=bucket.name)  # type: ignore[attr-defined]
        for key, value in settings.items():
            conf.set(key, value)
        yield bucket
    finally:
        for key in settings:
            conf.unset(key)
        stop_process_groups([process])

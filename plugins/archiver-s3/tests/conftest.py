"""A real S3 API on 127.0.0.1 (moto's ThreadedMotoServer) for the whole test session.

Fake credentials are set for the session and the developer's ~/.aws files are hidden,
so nothing here can reach a real account. moto keeps its state per process, so every
test works in buckets of its own.
"""

from __future__ import annotations

import contextlib
import json
import uuid

import boto3
import pytest
import requests
from archiver_s3 import S3Sink
from s3_testing import REGION, start_moto


@pytest.fixture(scope="session", autouse=True)
def aws_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                    "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                    "AWS_REGION"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        # Fail fast when a test stops a server on purpose.
        mp.setenv("AWS_RETRY_MODE", "standard")
        mp.setenv("AWS_MAX_ATTEMPTS", "2")
        yield


@pytest.fixture(scope="session")
def moto_endpoint(aws_env):
    server, url = start_moto()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(moto_endpoint):
    """A plain boto3 client for looking at what the server stored."""
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)


@pytest.fixture
def new_bucket(s3):
    """``new_bucket(lock=False)`` creates a bucket of its own and returns its name."""
    def make(lock: bool = False) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
        return name
    return make


@pytest.fixture
def bucket(new_bucket) -> str:
    return new_bucket()


@pytest.fixture
def make_sink(moto_endpoint, bucket):
    """``make_sink(**options)``: an S3Sink on the moto server (``bucket`` by default)."""
    made: list[S3Sink] = []

    def make(label: str = "s3-test", endpoint: str | None = None, **options) -> S3Sink:
        options.setdefault("bucket", bucket)
        config = S3Sink.Config(endpoint_url=endpoint or moto_endpoint, region=REGION,
                               **options)
        sink = S3Sink(config, label=label)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


@pytest.fixture
def iam_keys(moto_endpoint):
    """``iam_keys(actions)``: access keys of a new IAM user allowed exactly ``actions``."""
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=REGION)

    def make(actions: list[str]) -> dict[str, str]:
        user = f"u-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    return make


@pytest.fixture
def enforce_iam(moto_endpoint):
    """Context manager: moto checks signatures and IAM policies inside the block."""
    @contextlib.contextmanager
    def block():
        requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        try:
            yield
        finally:
            requests.post(f"{moto_endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
    return block

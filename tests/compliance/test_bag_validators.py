"""Bags that every validator accepts: bagit-python (``bagit.Bag.validate`` and the
``bagit.py --validate`` command line of the Library of Congress tool) and an RFC 8493
reader written here, strict where the RFC is strict, whatever the artifact names."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import bagit
import pytest
from conftest import Archive

from archiver import keys as keymod
from archiver.compliance.bagit import NAMES_NAME, parse_names
from archiver.testing.emulator import ArtifactSpec

BAGIT_CLI = shutil.which("bagit.py") or str(Path(sys.executable).with_name("bagit.py"))

#: Names that once broke bags, or could: "%", CR, LF, "+", "&", spaces, non-ASCII, case.
AWKWARD = [
    "odd name %25 with \nnewline.txt",
    "cost report 100% + tax.csv",
    "a\rb.txt",
    "crlf\r\nname.txt",
    "R&D + more/a b  c.txt",
    "trailing space .txt ",
    "tab\there.txt",
    "back\\slash.txt",
    "résumé/plan é.json",
    "日本語/ファイル.pdf",
    "Plan.pdf", "plan.pdf", "PLAN.PDF",          # differ only in case
    "../dots/../x.txt", "..",
    "*star.txt",
    "look-alikes ％ ␊ ‛ ．.txt",               # the mapping's own characters
    "%0A literally.txt", "%25%25.txt",
    "nbsp\u00a0",
]


# --------------------------------------------------------------------------- RFC 8493

_LINE = re.compile(r"([0-9a-fA-F]+)[ \t]+(.+)")
_PCT = re.compile(r"%(0A|0D|25)", re.IGNORECASE)


def rfc_decode(path: str) -> str:
    """RFC 8493 2.1.3: only %0A, %0D and %25 are decoded (case-insensitive hex)."""
    return _PCT.sub(lambda m: {"0a": "\n", "0d": "\r", "25": "%"}[m.group(1).lower()], path)


def rfc_lines(data: bytes) -> list[str]:
    """Lines end with LF, CR or CRLF (RFC 8493 2.1.1); tag files are UTF-8 here."""
    text = data.decode("utf-8")
    assert not text.startswith("\ufeff"), "a BOM"
    return [ln for ln in re.split(r"\r\n|\n|\r", text) if ln != ""]


def rfc_manifest(path: Path) -> dict[str, str]:
    """``checksum SP path`` per line; the path percent-decoded as the RFC says."""
    out = {}
    for n, line in enumerate(rfc_lines(path.read_bytes()), 1):
        m = _LINE.fullmatch(line)
        assert m, f"{path.name} line {n} is not 'checksum path': {line!r}"
        name = rfc_decode(m.group(2))
        assert name not in out, f"{path.name}: {name!r} listed twice"
        assert not name.startswith("/") and ".." not in name.split("/"), name
        out[name] = m.group(1).lower()
    return out


def files_of(bag: Path, top: str = "") -> set[str]:
    base = bag / top if top else bag
    return {p.relative_to(bag).as_posix() for p in base.rglob("*") if p.is_file()}


def rfc_validate(bag: Path) -> None:
    """What RFC 8493 requires of a complete, valid bag, checked without bagit-python."""
    declaration = rfc_lines((bag / "bagit.txt").read_bytes())
    assert declaration == ["BagIt-Version: 1.0", "Tag-File-Character-Encoding: UTF-8"]
    manifests = sorted(bag.glob("manifest-*.txt"))
    assert manifests, "no payload manifest"
    payload = files_of(bag, "data")
    for manifest in manifests:
        alg = manifest.name[len("manifest-"):-len(".txt")]
        listed = rfc_manifest(manifest)
        assert set(listed) == payload, (f"{manifest.name}: not on disk "
                                        f"{sorted(set(listed) - payload)!r}, not listed "
                                        f"{sorted(payload - set(listed))!r}")
        for name, digest in listed.items():
            assert hashlib.new(alg, (bag / name).read_bytes()).hexdigest() == digest, name
    tags = {n for n in files_of(bag) - payload if not n.startswith("tagmanifest-")}
    tagmanifests = sorted(bag.glob("tagmanifest-*.txt"))
    assert tagmanifests, "no tag manifest"
    for tm in tagmanifests:
        alg = tm.name[len("tagmanifest-"):-len(".txt")]
        listed = rfc_manifest(tm)
        assert set(listed) == tags, f"{tm.name} does not cover {sorted(tags - set(listed))}"
        for name, digest in listed.items():
            assert hashlib.new(alg, (bag / name).read_bytes()).hexdigest() == digest, name
    info = dict(ln.split(": ", 1) for ln in rfc_lines((bag / "bag-info.txt").read_bytes())
                if not ln[0].isspace())
    size = sum((bag / n).stat().st_size for n in payload)
    assert info["Payload-Oxum"] == f"{size}.{len(payload)}"


def validate_everywhere(bag: Path) -> None:
    rfc_validate(bag)
    bagit.Bag(str(bag)).validate()
    out = subprocess.run([BAGIT_CLI, "--validate", str(bag)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "is valid" in out.stderr


# --------------------------------------------------------------------------- the tests

def test_awkward_names_give_bags_every_validator_accepts(emu, tmp_path):
    job = emu.add_job("proj_c", artifacts=[ArtifactSpec(path=p, size=200 + i)
                                           for i, p in enumerate(AWKWARD)])
    arc = Archive(tmp_path, emu, sinks=("primary",), top="bagit: {algorithms: [sha256, md5]}\n")
    result = arc.cli("run")
    assert result.exit_code == 0, result.output + result.stderr
    bag = arc.job_dir(job)
    validate_everywhere(bag)
    payload = files_of(bag, "data")
    assert len(payload) == len(AWKWARD) + 2
    for name in payload:  # stored names: nothing any reader could read differently
        assert not set(name) & {"%", "\r", "\n", "\\"}, name
        assert all(s == s.rstrip() for s in name.split("/")), name
    # archiver-names.json maps every payload file back to its artifact path
    names = parse_names((bag / NAMES_NAME).read_bytes())
    assert set(names) == payload
    assert sorted(v for k, v in names.items() if k.startswith("data/artifacts/")) == \
        sorted(AWKWARD)
    for file, path in names.items():  # and the mapping is reversible where not suffixed
        stored = file[len("data/artifacts/"):]
        if file.startswith("data/artifacts/") and "~" not in stored and ".." not in path:
            assert keymod.decode_key(stored) == path.strip("/")
    assert NAMES_NAME in rfc_manifest(bag / "tagmanifest-sha256.txt")


def test_the_demo_bags_validate(tmp_path):
    out = subprocess.run([sys.executable, "-m", "archiver.cli", "demo", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PLANGREP_API_KEY": ""})
    assert out.returncode == 0, out.stderr
    bags = sorted(p.parent for p in (tmp_path / "archive").rglob("bagit.txt"))
    assert len(bags) == 3, bags
    for bag in bags:
        validate_everywhere(bag)
    tower = next(b for b in bags if b.name == "job_demo_tower_ifc")
    assert (tower / "data/artifacts/exports/cost report 100％ + tax.csv.gz").is_file()


def _legacy_keys(monkeypatch) -> None:
    """The key mapping of the previous release (percent escapes in stored names)."""
    monkeypatch.setattr(keymod, "sanitize_segment", keymod.legacy_segment)
    monkeypatch.setattr(keymod, "ensure_safe_key", lambda key: key if keymod.is_safe_key(key)
                        else keymod.sanitize_key(key))


def test_a_job_resumed_after_the_upgrade_keeps_its_old_names(emu, tmp_path, monkeypatch):
    """Copies stored under the old names are not renamed and not stored twice; the bag
    lists them RFC 8493-encoded and names them in archiver-names.json."""
    job = emu.add_job("proj_c", artifacts=[ArtifactSpec(path="50% done.json", size=300),
                                           ArtifactSpec(path="later 1%.bin", size=5000)])
    arc = Archive(tmp_path, emu, sinks=("primary",), top="artifact_attempts: 1\n")
    emu.faults.fault_paths = {"later 1%.bin"}
    emu.faults.drop_mid_body_n = 1
    with monkeypatch.context() as mp:
        _legacy_keys(mp)
        first = arc.cli("run")
    assert first.exit_code == 1, first.output + first.stderr  # incomplete: no bag yet
    bag = arc.job_dir(job)
    old = bag / "data" / "artifacts" / "50%25 done.json"
    assert old.is_file()
    second = arc.cli("run")  # the upgraded release
    assert second.exit_code == 0, second.output + second.stderr
    payload = files_of(bag, "data")
    assert "data/artifacts/50％ done.json" not in payload  # no second copy, new name
    assert {"data/artifacts/50%25 done.json", "data/artifacts/later 1％.bin"} <= payload
    line = next(ln for ln in (bag / "manifest-sha256.txt").read_text().splitlines()
                if "done" in ln)
    assert line.endswith("  data/artifacts/50%2525 done.json")  # RFC 8493 encoding
    rfc_validate(bag)
    names = parse_names((bag / NAMES_NAME).read_bytes())
    assert names["data/artifacts/50%25 done.json"] == "50% done.json"
    assert names["data/artifacts/later 1％.bin"] == "later 1%.bin"


def _hand_made_bag(bag: Path, files: dict[str, bytes], lines: list[str]) -> None:
    (bag / "data").mkdir(parents=True)
    for name, data in files.items():
        (bag / "data" / name).write_bytes(data)
    (bag / "bagit.txt").write_bytes(b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
    (bag / "manifest-sha256.txt").write_text("".join(f"{ln}\n" for ln in lines))
    size = sum(map(len, files.values()))
    (bag / "bag-info.txt").write_text(f"Payload-Oxum: {size}.{len(files)}\n")
    tags = ["bagit.txt", "manifest-sha256.txt", "bag-info.txt"]
    (bag / "tagmanifest-sha256.txt").write_text("".join(
        f"{hashlib.sha256((bag / t).read_bytes()).hexdigest()}  {t}\n" for t in tags))


def test_the_strict_reader_decodes_as_rfc_8493_says(tmp_path):
    """The reader above is no pushover: it decodes %25, %0A, %0D and nothing else, and a
    payload file missing from the manifest (or a line without a file) fails it."""
    files = {"100%.txt": b"a", "a\nb": b"b", "%41.txt": b"c"}
    pct, lf, hexish = (hashlib.sha256(d).hexdigest() for d in files.values())
    good = [f"{pct}  data/100%25.txt", f"{lf}  data/a%0Ab", f"{hexish}  data/%2541.txt"]
    _hand_made_bag(tmp_path / "good", files, good)
    rfc_validate(tmp_path / "good")
    unencoded = [f"{pct}  data/100%.txt", *good[1:]]  # "%.t" stays, fine
    _hand_made_bag(tmp_path / "plain", files, unencoded)
    rfc_validate(tmp_path / "plain")
    wrong = [f"{pct}  data/100%2525.txt", *good[1:]]  # decodes to "100%25"
    _hand_made_bag(tmp_path / "wrong", files, wrong)
    with pytest.raises(AssertionError, match="not on disk.*100%25.txt"):
        rfc_validate(tmp_path / "wrong")
    _hand_made_bag(tmp_path / "short", files, good[:2])
    with pytest.raises(AssertionError, match="not listed.*%41.txt"):
        rfc_validate(tmp_path / "short")

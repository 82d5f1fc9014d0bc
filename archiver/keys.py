"""Object keys: the standard layout and the one sanitiser every sink uses.

Artifact paths and Content-Disposition filenames come from the network. Every key any
sink writes goes through :func:`sanitize_key`, which guarantees:

* no segment is empty, ``.`` or ``..``; there is no leading ``/``; so nothing escapes
  the sink's root or prefix;
* ``%``, ``\\``, NUL and other control characters are percent-encoded (``%25``, ``%5C``,
  ``%00``), so the mapping stays injective and readable;
* a segment is at most :data:`MAX_SEGMENT_BYTES` UTF-8 bytes and a key at most
  :data:`MAX_KEY_BYTES`; longer ones are cut and made unique with a hash of the original.

:func:`artifact_keys` maps all paths of one job at once so that paths which would land on
the same key (``a//b`` and ``a/b``, or ``Plan.pdf`` and ``plan.pdf`` on a
case-insensitive filesystem) each get a distinct, deterministic ``~hash`` suffix.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict
from typing import Iterable

MAX_SEGMENT_BYTES = 200
MAX_KEY_BYTES = 768
_ESCAPE = re.compile(r"[%/\\\x00-\x1f\x7f-\x9f]")


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary."""
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def _blen(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def sanitize_segment(segment: str) -> str:
    if not segment:
        return "_empty~" + _hash(segment, 16)
    seg = _ESCAPE.sub(lambda m: "%{:02X}".format(ord(m.group())), segment)
    # Lone surrogates (undecodable bytes) cannot be file names; encode them too.
    seg = "".join(c if not 0xD800 <= ord(c) <= 0xDFFF else f"%u{ord(c):04X}" for c in seg)
    if seg in (".", ".."):
        seg = seg.replace(".", "%2E")
    if _blen(seg) > MAX_SEGMENT_BYTES:
        seg = _cut(seg, MAX_SEGMENT_BYTES - 17) + "~" + _hash(segment, 16)
    return seg


def sanitize_key(key: str) -> str:
    """A safe relative key for ``key`` (``/`` separates segments, backslash does not)."""
    segments = [sanitize_segment(s) for s in key.split("/") if s]
    if not segments:
        return "_empty~" + _hash(key, 16)
    out = "/".join(segments)
    if _blen(out) > MAX_KEY_BYTES:
        out = "_long/" + _hash(key, 32) + "/" + _cut(segments[-1], MAX_SEGMENT_BYTES)
    return out


_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_safe_key(key: str) -> bool:
    """True when ``key`` needs no sanitising: no empty, ``.`` or ``..`` segment, no
    backslash or control character, within the length limits. Output of
    :func:`sanitize_key` is always safe (``%`` escapes are fine)."""
    segments = key.split("/")
    return (bool(key) and not _UNSAFE.search(key) and _blen(key) <= MAX_KEY_BYTES + 256
            and all(s not in ("", ".", "..") and _blen(s) <= MAX_SEGMENT_BYTES
                    for s in segments))


def ensure_safe_key(key: str) -> str:
    """``key`` itself when already safe (so sanitising twice never re-escapes ``%``),
    else :func:`sanitize_key` of it. For keys built from sanitised parts and then handed
    to plugins (the artifact-key hook, transform renames)."""
    return key if is_safe_key(key) else sanitize_key(key)


def _with_suffix(key: str, tag: str) -> str:
    head, _, last = key.rpartition("/")
    stem, dot, ext = last.partition(".")
    last = f"{stem}~{tag}{dot}{ext}" if stem else f"{last}~{tag}"
    if _blen(last) > MAX_SEGMENT_BYTES:
        last = _cut(stem or last, MAX_SEGMENT_BYTES - len(tag) - 1) + "~" + tag
    out = f"{head}/{last}" if head else last
    if _blen(out) > MAX_KEY_BYTES:
        out = "_long/" + _hash(key, 32) + "/" + last
    return out


def _fold(key: str) -> str:
    return unicodedata.normalize("NFC", key).casefold()


def artifact_keys(paths: Iterable[str]) -> dict[str, str]:
    """Deterministic ``path -> relative key`` for every artifact path of one job."""
    keys = {p: sanitize_key(p) for p in paths}
    groups: dict[str, list[str]] = defaultdict(list)
    for path, key in keys.items():
        groups[_fold(key)].append(path)
    # A key that is also another key's directory ("a" and "a/b") clashes as well.
    dirs = {f.rsplit("/", i)[0] for f in groups for i in range(1, f.count("/") + 1)}
    clashing = sorted(f for f, members in groups.items() if len(members) > 1 or f in dirs)
    taken = (set(groups) - set(clashing)) | dirs
    for folded in clashing:
        for path in sorted(groups[folded]):
            n = 8
            while True:  # longer hashes, then a counter, until no other key has the name
                tag = _hash(path, n) if n <= 64 else f"{_hash(path, 56)}{n}"
                candidate = _with_suffix(keys[path], tag)
                if _fold(candidate) not in taken:
                    break
                n += 8
            taken.add(_fold(candidate))
            keys[path] = candidate
    return keys


def job_prefix(project_id: str, job_id: str) -> str:
    return f"{sanitize_segment(project_id or '_noproject')}/{sanitize_segment(job_id)}"


def job_json_key(project_id: str, job_id: str) -> str:
    return f"{job_prefix(project_id, job_id)}/data/job.json"


def result_json_key(project_id: str, job_id: str) -> str:
    return f"{job_prefix(project_id, job_id)}/data/result.json"


def artifacts_prefix(project_id: str, job_id: str) -> str:
    """Where a job's artifacts go; append a key from :func:`artifact_keys`."""
    return f"{job_prefix(project_id, job_id)}/data/artifacts/"


def artifact_key(project_id: str, job_id: str, relative: str) -> str:
    return f"{job_prefix(project_id, job_id)}/data/artifacts/{sanitize_key(relative)}"


def join_prefix(prefix: str, key: str) -> str:
    """``prefix`` + key; ``archive`` and ``archive/`` mean the same."""
    prefix = "/".join(sanitize_segment(s) for s in prefix.split("/") if s)
    return f"{prefix}/{key}" if prefix else key

"""Object keys: the standard layout and the one sanitiser every sink uses.

Artifact paths and Content-Disposition filenames come from the network. Every key any
sink writes goes through :func:`sanitize_key`, which guarantees:

* no segment is empty, ``.`` or ``..``; there is no leading ``/``; so nothing escapes
  the sink's root or prefix;
* the stored name never contains ``%``, CR, LF or any other character a BagIt manifest,
  a shell or a filesystem treats specially: those are mapped to look-alike Unicode
  characters, rclone's convention (``%`` -> ``％`` U+FF05, ``\\`` -> ``＼`` U+FF3C,
  control character c -> U+2400 + c, e.g. LF -> ``␊``, DEL -> ``␡``, a ``.``/``..``
  segment -> ``．``/``．．``, trailing spaces -> ``␠``), and characters with no
  look-alike (C1 controls, U+2028/U+2029, trailing Unicode white space, lone
  surrogates) to ``‛`` U+201B and four hex digits. A look-alike (or ``‛``) that is in
  the original name is quoted with ``‛``, so the mapping is reversible
  (:func:`decode_segment`); see docs/layout.md for the table;
* a segment is at most :data:`MAX_SEGMENT_BYTES` UTF-8 bytes and a key at most
  :data:`MAX_KEY_BYTES`; longer ones are cut and made unique with a hash of the original.

:func:`artifact_keys` maps all paths of one job at once so that paths which would land on
the same key (``a//b`` and ``a/b``, or ``Plan.pdf`` and ``plan.pdf`` on a
case-insensitive filesystem) each get a distinct, deterministic ``~hash`` suffix. The
original path of every stored name is recorded in the ledger and in each bag's
``archiver-names.json``.

Project and job ids (the bag root ``{project_id}/{job_id}``) and sink prefixes keep the
percent escapes of earlier releases (:func:`legacy_segment`): they are not part of any
manifest path, and existing archives stay where they are.
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

#: The quote character: ``‛`` + a look-alike is that character itself; ``‛`` + four hex
#: digits is the character with that code point.
QUOTE = "\u201b"
#: Character -> its look-alike, wherever it occurs in a name.
LOOKALIKE = {"%": "\uff05", "\\": "\uff3c", "/": "\uff0f", "\x7f": "\u2421",
             **{chr(c): chr(0x2400 + c) for c in range(0x20)}}
DOT, TRAILING_SPACE = "\uff0e", "\u2420"   # a "."/".." segment; a trailing space
_LOOKS = {v: k for k, v in LOOKALIKE.items()} | {DOT: ".", TRAILING_SPACE: " "}
_QUOTED = frozenset(_LOOKS) | {QUOTE}   # quoted when they occur in an original name
#: No look-alike: ``‛`` + hex. C1 controls, line/paragraph separators, lone surrogates.
_HEX = re.compile(r"[\x80-\x9f\u2028\u2029\ud800-\udfff]")
_UNCLEAN = re.compile("[%\\\\/\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary."""
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def _blen(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _hex(c: str) -> str:
    return f"{QUOTE}{ord(c):04X}"


def _units(segment: str, quote: bool = True) -> list[str]:
    """The encoded name as units (one per original character: never cut inside one).
    ``quote=False`` repairs a name that is already encoded (look-alikes stay as they are)."""
    if segment in (".", ".."):
        return [DOT] * len(segment)
    out = []
    for c in segment:
        if quote and c in _QUOTED:
            out.append(QUOTE + c)
        elif c in LOOKALIKE:
            out.append(LOOKALIKE[c])
        elif _HEX.match(c):
            out.append(_hex(c))
        else:
            out.append(c)
    # Readers strip white space at the end of a manifest line (bagit-python does).
    trailing = len(segment) - len(segment.rstrip())
    for i in range(len(out) - trailing, len(out)):
        if out[i] == " ":
            out[i] = TRAILING_SPACE
        elif out[i] == segment[i]:  # not mapped yet (e.g. U+00A0, U+3000)
            out[i] = _hex(segment[i])
    return out


def encode_segment(segment: str) -> str:
    """The reversible mapping of one name (no length limit): see the module doc."""
    return "".join(_units(segment))


def decode_segment(name: str) -> str:
    """The original of a name :func:`encode_segment` made (a name cut or suffixed with
    ``~hash`` decodes to the cut text: the bag's ``archiver-names.json`` has the original)."""
    out, i = [], 0
    while i < len(name):
        c = name[i]
        if c == QUOTE and i + 1 < len(name) and name[i + 1] in _QUOTED:
            out.append(name[i + 1])
            i += 2
            continue
        if c == QUOTE and re.fullmatch(r"[0-9A-F]{4}", name[i + 1:i + 5]):
            out.append(chr(int(name[i + 1:i + 5], 16)))
            i += 5
            continue
        out.append(_LOOKS.get(c, c))
        i += 1
    return "".join(out)


def decode_key(key: str) -> str:
    return "/".join(decode_segment(s) for s in key.split("/"))


def is_clean_segment(segment: str) -> bool:
    """A name :func:`sanitize_segment` could have made: nothing to encode (no ``%``, CR,
    LF, control character, backslash, trailing white space, ``.``/``..``)."""
    return (bool(segment) and segment not in (".", "..") and not _UNCLEAN.search(segment)
            and segment == segment.rstrip() and _blen(segment) <= MAX_SEGMENT_BYTES)


def _limited(units: list[str], original: str) -> str:
    seg = "".join(units)
    if _blen(seg) <= MAX_SEGMENT_BYTES:
        return seg
    kept, size = [], 0
    for u in units:
        size += _blen(u)
        if size > MAX_SEGMENT_BYTES - 17:
            break
        kept.append(u)
    return "".join(kept) + "~" + _hash(original, 16)


def sanitize_segment(segment: str) -> str:
    if not segment:
        return "_empty~" + _hash(segment, 16)
    return _limited(_units(segment), segment)


def sanitize_key(key: str, limit: int = MAX_KEY_BYTES) -> str:
    """A safe relative key for ``key`` (``/`` separates segments, backslash does not)."""
    segments = [sanitize_segment(s) for s in key.split("/") if s]
    return _joined(segments, key, limit)


def _joined(segments: list[str], key: str, limit: int) -> str:
    if not segments:
        return "_empty~" + _hash(key, 16)
    out = "/".join(segments)
    if _blen(out) > limit:
        out = "_long/" + _hash(key, 32) + "/" + segments[-1]
    return out


def _repair_key(key: str, limit: int) -> str:
    """An encoded key a plugin changed (a rename): unclean names are encoded again
    without quoting (their look-alikes already stand for the original characters)."""
    segments = [s if is_clean_segment(s) else _limited(_units(s, quote=False), s)
                for s in key.split("/") if s]
    return _joined(segments, key, limit)


def legacy_segment(segment: str) -> str:
    """Project and job ids, sink prefixes: the percent escapes of earlier releases
    (``%25``, ``%2E``, ``%uD800``), unchanged so that existing archives stay in place."""
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


_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def is_safe_key(key: str) -> bool:
    """True when ``key`` cannot escape a root: no empty, ``.`` or ``..`` segment, no
    backslash or control character, within the length limits. ``%`` is allowed: keys of
    earlier releases (and bag roots) hold percent escapes."""
    segments = key.split("/")
    return (bool(key) and not _UNSAFE.search(key) and _blen(key) <= MAX_KEY_BYTES + 256
            and all(s not in ("", ".", "..") and _blen(s) <= MAX_SEGMENT_BYTES
                    for s in segments))


def ensure_safe_key(key: str) -> str:
    """``key`` itself when already safe (so sanitising twice never re-encodes), else
    sanitised. For keys built from sanitised parts and then handed to plugins (the
    artifact-key hook, transform renames). In the layout ``{project}/{job}/data/<rest>``
    the bag root is kept and every name of ``<rest>`` must be clean
    (:func:`is_clean_segment`): stored payload names never hold ``%``, CR or LF."""
    parts = key.split("/", 3)
    if len(parts) == 4 and parts[2] == "data" and is_safe_key("/".join(parts[:3])):
        root, rest = "/".join(parts[:3]), parts[3]
        if all(is_clean_segment(s) for s in rest.split("/")) and \
                _blen(key) <= MAX_KEY_BYTES + 256:
            return key
        limit = max(2 * MAX_SEGMENT_BYTES, MAX_KEY_BYTES - _blen(root) - 1)
        return f"{root}/{_repair_key(rest, limit)}"
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
    return f"{legacy_segment(project_id or '_noproject')}/{legacy_segment(job_id)}"


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
    prefix = "/".join(legacy_segment(s) for s in prefix.split("/") if s)
    return f"{prefix}/{key}" if prefix else key

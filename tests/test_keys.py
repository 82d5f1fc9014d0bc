"""archiver.keys: untrusted paths become safe, distinct, deterministic keys."""

from __future__ import annotations

import itertools
import os
import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from archiver.default_plugins.local import LocalSink
from archiver.keys import (
    MAX_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    artifact_key,
    artifact_keys,
    decode_key,
    decode_segment,
    encode_segment,
    ensure_safe_key,
    is_clean_segment,
    job_json_key,
    job_prefix,
    join_prefix,
    result_json_key,
    sanitize_key,
)
from archiver.testing.sink_contract import read_back, store

NAME_MAX = 255  # bytes in one file name on every filesystem we target
LAYOUT = len("/data/artifacts/") + 2 * MAX_SEGMENT_BYTES + 1  # {project}/{job}/data/artifacts/

HOSTILE = [
    "../../etc/passwd", "..", ".", "/", "//", "", "/abs", "/abs/../x", "a/../../b",
    "a\\..\\b", "..\\..\\windows\\system32", "a\x00b", "\x00", "tab\there", "nl\nx\r\x1b[31m",
    "\x7f", "a//b", "a/b", "a/b/", "./a", "a/./b", "...", "....//....", "%2e%2e/%2E%2E",
    "%", "%25", "%00", "~", "x" * 10_000, "é" * 5_000, "/".join(["seg"] * 1_000),
    "/".join(["y" * 199] * 10), "日本語/ファイル.pdf", "Plan.pdf", "plan.pdf", "PLAN.PDF",
    "e\u0301.txt", "\u00e9.txt", "\udcff\udc80", "\ud800", "a:b*c?d\"e<f>g|h", " ", " / ",
    ".x.%%0123456789abcdef.partial",
]


def assert_safe(key: str, limit: int = MAX_KEY_BYTES, segment_limit: int = MAX_SEGMENT_BYTES):
    assert key and not key.startswith("/"), key
    assert "\\" not in key and not any(c < " " or c == "\x7f" for c in key), repr(key)
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in key), repr(key)
    key.encode("utf-8")  # encodable as a file name / object name
    for segment in key.split("/"):
        assert segment not in ("", ".", ".."), repr(key)
        assert len(segment.encode()) <= segment_limit, (len(segment.encode()), key[:80])
    assert len(key.encode()) <= limit, (len(key.encode()), key[:80])


def assert_clean(key: str):
    """A stored payload name: nothing a manifest, shell or filesystem treats specially."""
    assert not any(c in key for c in "%\r\n\\"), repr(key)
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in key), repr(key)
    for segment in key.split("/"):
        assert segment == segment.rstrip(), repr(key)  # readers strip line ends
        assert is_clean_segment(segment), repr(key)


# --------------------------------------------------------------------------- sanitize_key

@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: repr(p)[:40])
def test_every_hostile_path_gives_a_safe_key(path):
    assert_safe(sanitize_key(path))


@pytest.mark.parametrize("path, key", [
    ("../../etc/passwd", "．．/．．/etc/passwd"),
    ("/abs", "abs"),
    ("a\\..\\b", "a＼..＼b"),  # backslash is no separator: one segment, a look-alike
    ("a\x00b\x1f\x7f", "a␀b␟␡"),
    ("a//b", "a/b"),
    ("100%", "100％"),
    ("odd name %25 with \nnewline.txt", "odd name ％25 with ␊newline.txt"),
    ("cr\r.txt", "cr␍.txt"),
    ("trailing  ", "trailing␠␠"),
    ("nbsp\u00a0", "nbsp‛00A0"),
    ("a\x85b\u2028c", "a‛0085b‛2028c"),
    ("100％ ‛ ␊ ．", "100‛％ ‛‛ ‛␊ ‛．"),  # look-alikes in the original are quoted
    ("日本語/ファイル.pdf", "日本語/ファイル.pdf"),  # readable non-ASCII stays as is
    ("a + b & c.txt", "a + b & c.txt"),
    ("\ud800", "‛D800"),
])
def test_known_mappings(path, key):
    assert sanitize_key(path) == key
    assert decode_key(key) == "/".join(s for s in path.split("/") if s)


def test_layout_prefixes_keep_the_percent_escapes_of_earlier_releases():
    # bag roots and sink prefixes are not manifest paths: existing archives stay put
    assert job_prefix("p%", "..") == "p%25/%2E%2E"
    assert join_prefix("a%b/.", "k") == "a%25b/%2E/k"


def test_empty_paths_get_a_stable_name():
    assert sanitize_key("") == sanitize_key("") and sanitize_key("").startswith("_empty~")
    assert sanitize_key("/") != sanitize_key("")  # the hash is of the original


def test_long_names_are_cut_and_stay_distinct():
    a, b = "x" * 10_000, "x" * 9_999 + "y"
    ka, kb = sanitize_key(a), sanitize_key(b)
    assert ka != kb and len(ka.encode()) == MAX_SEGMENT_BYTES
    cut = sanitize_key("é" * 5_000)  # cut on a character boundary, never mid-character
    assert len(cut.encode()) <= MAX_SEGMENT_BYTES and cut.startswith("é" * 91)
    deep = ["/".join(["y" * 199] * 10), "/".join(["y" * 199] * 9 + ["z" * 199])]
    long_keys = [sanitize_key(p) for p in deep]
    assert long_keys[0] != long_keys[1] and all(k.startswith("_long/") for k in long_keys)


def test_distinct_inputs_give_distinct_keys():
    # Only separators that collapse ("a//b", "/a", "a/") may merge; escapes never do.
    paths = ["%", "%25", "%2525", "\\", "%5C", "\x00", "%00", ".", "%2E", "..", "%2E%2E",
             "\ud800", "%uD800", "a\\b", "a/b", "x" * 300, "x" * 301, "~", "_empty"]
    keys = [sanitize_key(p) for p in paths]
    assert len(set(keys)) == len(paths), keys


text = st.text(st.one_of(st.sampled_from("/.%\\~ aA\x00\x1f\x7fé"), st.characters(),
                         st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
               max_size=400)
examples = settings(max_examples=300, deadline=None, database=None)


@examples
@given(text)
def test_any_text_gives_a_safe_key(path):
    assert_safe(sanitize_key(path))
    assert_clean(sanitize_key(path))


@examples
@given(st.text(st.one_of(st.sampled_from("%\r\n\\. \x00\x7f\x85\u00a0\u2028％＼．␊␠␡‛0A"),
                         st.characters()), max_size=60))
def test_the_mapping_is_reversible(name):
    encoded = encode_segment(name)
    assert decode_segment(encoded) == name
    if name and len(encoded.encode()) <= MAX_SEGMENT_BYTES:
        assert is_clean_segment(encoded)
        assert sanitize_key(name) == encoded or "/" in name


@examples
@given(text)
def test_sanitised_keys_pass_ensure_safe_key_unchanged(path):
    key = f"{job_prefix('p', 'j')}/data/artifacts/{sanitize_key(path)}"
    assert ensure_safe_key(key) == key  # sanitising twice never re-encodes


def test_plugin_changed_keys_are_repaired_without_double_encoding():
    root = job_prefix("p%", "j")  # a bag root of an earlier release keeps its escapes
    # a transform rename that leaves a trailing space; a hook key holding "%" and LF
    assert ensure_safe_key(f"{root}/data/artifacts/100％ x ") == \
        f"{root}/data/artifacts/100％ x␠"
    assert ensure_safe_key(f"{root}/data/custom/a%b\nc") == f"{root}/data/custom/a％b␊c"
    assert decode_key("100％ x␠") == "100% x "
    # keys outside the layout are only made safe, as before
    assert ensure_safe_key("elsewhere/a%25b") == "elsewhere/a%25b"


# --------------------------------------------------------------------------- artifact_keys

def folded(key: str) -> str:
    return unicodedata.normalize("NFC", key).casefold()


def test_case_and_separator_variants_get_distinct_keys():
    paths = ["Plan.pdf", "plan.pdf", "PLAN.PDF", "a//b", "a/b", "/a/b", "e\u0301.txt",
             "\u00e9.txt", "keep.txt"]
    keys = artifact_keys(paths)
    assert len({folded(k) for k in keys.values()}) == len(paths), keys
    assert keys["keep.txt"] == "keep.txt"  # no suffix without a clash
    assert keys["Plan.pdf"].startswith("Plan~") and keys["Plan.pdf"].endswith(".pdf")


def test_artifact_keys_are_deterministic_whatever_the_order():
    paths = ["Plan.pdf", "plan.pdf", "a//b", "a/b", "x", "X", "../y", "..\\y"]
    want = artifact_keys(paths)
    for perm in itertools.islice(itertools.permutations(paths), 200):
        assert artifact_keys(perm) == want
    assert artifact_keys(reversed(paths)) == want


@examples
@given(st.lists(text, max_size=12))
def test_artifact_keys_property(paths):
    keys = artifact_keys(paths)
    assert set(keys) == set(paths)
    assert len({folded(k) for k in keys.values()}) == len(keys)
    for key in keys.values():
        assert_safe(key, limit=MAX_KEY_BYTES + 2 * 9, segment_limit=NAME_MAX - 30)
        assert_clean(key)
    shuffled = list(paths)
    random.Random(0).shuffle(shuffled)
    assert artifact_keys(shuffled) == keys


# --------------------------------------------------------------------------- layout keys

@pytest.mark.parametrize("project, job", [("p1", "job_1"), ("..", "."), ("", "a\\b"),
                                           ("x" * 1000, "\x00" * 50)])
def test_layout_keys_are_safe(project, job):
    for key in (job_json_key(project, job), result_json_key(project, job)):
        assert_safe(key)
    for path in HOSTILE:
        key = artifact_key(project, job, path)
        assert_safe(key, limit=MAX_KEY_BYTES + LAYOUT)
        assert key.split("/")[2:4] == ["data", "artifacts"]


def test_join_prefix():
    assert join_prefix("archive/", "k") == join_prefix("archive", "k") == "archive/k"
    assert join_prefix("", "k") == "k"
    assert join_prefix("../x//y", "k") == "%2E%2E/x/y/k"  # as in earlier releases


# --------------------------------------------------------------------------- end to end

def test_hostile_keys_land_inside_the_local_root(tmp_path):
    root = tmp_path / "root"
    sink = LocalSink(LocalSink.Config(root=root), label="t")
    keys = artifact_keys(HOSTILE)
    # One job per path: ".." and "../../etc/passwd" would otherwise clash as file and
    # directory (see test_file_and_directory_keys_do_not_clash below).
    stored = {}
    for i, path in enumerate(HOSTILE):
        key = f"{job_prefix('p', f'job_{i}')}/data/artifacts/{keys[path]}"
        location = store(sink, key, f"artifact {i}".encode()).location
        real = os.path.realpath(location)
        assert os.path.commonpath([os.path.realpath(root), real]) == os.path.realpath(root)
        stored[key] = f"artifact {i}".encode()
    for key, data in stored.items():
        assert read_back(sink, key) == data
    stored_files = [f for _, _, fs in os.walk(root) for f in fs]
    assert len(stored_files) == len(HOSTILE) and os.listdir(tmp_path) == ["root"]


# --------------------------------------------------------------------------- regressions
# Each of these once found a defect in keys.py.

@pytest.mark.parametrize("project, job", [("../..", "j"), ("p", "../../../etc"), ("p", ""),
                                           ("p", "a/b")])
def test_hostile_ids_cannot_escape_the_layout(project, job):
    for key in (job_json_key(project, job), artifact_key(project, job, "x")):
        assert_safe(key, limit=MAX_KEY_BYTES + LAYOUT)
        assert key.split("/")[2] == "data", key


def test_file_and_directory_keys_do_not_clash():
    # ".." -> "%2E%2E" is a file; "../../etc/passwd" needs "%2E%2E" to be a directory.
    keys = artifact_keys(["..", "../../etc/passwd", "Report", "report/page1.png"])
    dirs = {folded(k).rsplit("/", 1)[0] for k in keys.values() if "/" in k}
    dirs |= {d.rsplit("/", i)[0] for d in dirs for i in range(1, d.count("/") + 1)}
    assert not dirs & {folded(k) for k in keys.values()}, keys


def test_c1_control_characters_are_escaped():
    assert not any(unicodedata.category(c) == "Cc" for c in sanitize_key("a\x85b\x9bc"))
    assert decode_key(sanitize_key("a\x85b\x9bc")) == "a\x85b\x9bc"


def test_a_cut_name_never_ends_inside_an_escape():
    for pad in range(160, 185):
        for tail in ("‛" * 20, "\x85" * 20, "％" * 20):
            name = "x" * pad + tail
            key = sanitize_key(name)
            assert len(key.encode()) <= MAX_SEGMENT_BYTES and is_clean_segment(key)
            head = key.rsplit("~", 1)[0]
            assert name.startswith(decode_segment(head)), (pad, tail[0])


def test_clash_suffix_keeps_segment_limit():
    for path in artifact_keys(["x" * 200, "X" * 200]).values():
        assert len(path.encode()) <= MAX_SEGMENT_BYTES


def test_clash_suffix_keeps_key_limit():
    deep = "/".join(["y" * 100] * 7) + "/z" * 30
    for key in artifact_keys([deep, deep.upper()]).values():
        assert len(key.encode()) <= MAX_KEY_BYTES


def test_suffixed_key_cannot_collide_with_a_literal_path():
    clash = artifact_keys(["A.pdf", "a.pdf"])["a.pdf"]  # e.g. "a~a7949e62.pdf"
    keys = artifact_keys(["A.pdf", "a.pdf", clash])
    assert len(set(keys.values())) == 3, keys

"""The contract every transform (built-in or third-party) must pass.

The core feeds a stage chunks of whatever size the network delivered, so a stage's
output must depend on its input bytes only, never on how they were cut. This module
checks that by feeding the same input in many chunkings (whole, 1-byte chunks, empty
chunks, random cuts) and comparing outputs and facts.

Two ways to use it. Directly, with a zero-argument factory returning a fresh stage::

    from archiver.testing.transform_contract import check_transform, check_transform_rejects

    def test_my_stage():
        check_transform(lambda: MyStage(), [b"", b"abc", bytes(100_000)])
        check_transform_rejects(lambda: MyStage(), [b"not valid"])

Or by subclassing :class:`TransformContract` in a test module::

    import pytest
    from archiver.testing.transform_contract import TransformContract

    class TestUpper(TransformContract):
        @pytest.fixture
        def transform(self):
            return UpperTransform(UpperTransform.Config())

        @pytest.fixture
        def sample_inputs(self):
            return [b"", b"hello", b"x" * 100_000]

The harness calls ``finish()`` exactly once per stage and ``facts()`` only after it, as
the pipeline does. What it requires of a stage, beyond :class:`archiver.components.Stage`:

* ``feed`` and ``finish`` return ``bytes`` (not ``bytearray`` or ``memoryview``);
* concatenated output and ``facts()`` are identical for every chunking of an input;
* ``facts()`` is JSON-serialisable (the ledger stores it) and stable when asked twice;
* input it refuses raises :class:`~archiver.errors.TransformError` (with a message) in
  every chunking, at some ``feed`` or at ``finish``;
* a transform declaring ``changes_bytes = False`` outputs its input unchanged and
  reports every algorithm of ``digest_algorithms()`` in ``facts()["digests"]``.

The asserts carry their own messages, so the suite reads well where pytest does not
rewrite asserts in installed modules.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ..components import ArtifactContext, Stage, Transform
from ..errors import TransformError
from ..model import Artifact, Job

StageFactory = Callable[[], Stage]
ONE_BYTE_LIMIT = 64 << 10  # inputs up to this size are also fed entirely in 1-byte chunks


@dataclass
class TransformRun:
    """Output and facts of one stage fed one input."""

    output: bytes
    facts: dict[str, Any]


def sample_context(key: str = "proj-1/job-1/data/artifacts/sample.bin",
                   sink: str | None = None) -> ArtifactContext:
    """An :class:`ArtifactContext` for stages under test."""
    job = Job(id="job-1", project_id="proj-1", status="completed")
    artifact = Artifact(job_id="job-1", path="sample.bin", scope_id="job-1",
                        url="http://127.0.0.1:1/v1/jobs/job-1/artifacts?path=sample.bin")
    return ArtifactContext(job, artifact, key, sink)


def default_inputs() -> list[bytes]:
    """Empty, tiny, repetitive and incompressible inputs (the last spans > 64 KiB)."""
    return [b"", b"x", b"hello world\n" * 100, bytes(range(256)) * 40,
            random.Random(7).randbytes(70_001)]


def chunkings(data: bytes, *, seed: int = 0, rounds: int = 20
              ) -> Iterator[tuple[str, list[bytes]]]:
    """``(label, chunks)`` pairs, each concatenating to ``data``; the first is whole."""
    yield "whole", [data]
    yield "whole between empty chunks", [b"", data, b""]
    one = [data[i:i + 1] for i in range(len(data))]
    if len(data) <= ONE_BYTE_LIMIT:
        yield "1-byte chunks", [b""] + [c for b in one for c in (b, b"")]
    else:  # 1-byte edges, so the whole stays fast for large inputs
        yield "1-byte head and tail", one[:4096] + [data[4096:-4096]] + one[-4096:]
    rng = random.Random(f"{seed}:{len(data)}")
    for r in range(rounds):
        chunks, pos = [], 0
        while pos < len(data):
            n = rng.choice((0, 1, 1, 2, 3, rng.randint(4, 64), rng.randint(1, 4096),
                            rng.randint(1, max(1, len(data) // 3)),
                            rng.randint(1, len(data))))
            chunks.append(data[pos:pos + n])
            pos += n
        yield f"random cuts #{r} (seed {seed})", chunks


def _need_bytes(value: Any, call: str, label: str) -> bytes:
    assert isinstance(value, bytes), \
        f"[{label}] {call} returned {type(value).__name__}, not bytes"
    return value


def run_stage(stage: Stage, chunks: list[bytes], label: str = "chunks") -> TransformRun:
    """Feed ``chunks``, finish once, read facts; check return types and facts."""
    out = bytearray()
    for i, chunk in enumerate(chunks):
        out += _need_bytes(stage.feed(chunk), f"feed() #{i} of {len(chunk)} bytes", label)
    out += _need_bytes(stage.finish(), "finish()", label)
    facts = stage.facts()
    assert isinstance(facts, dict), f"[{label}] facts() returned {type(facts).__name__}"
    try:
        encoded = json.dumps(facts, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"[{label}] facts() is not JSON-serialisable: {exc}") from exc
    again = json.dumps(stage.facts(), sort_keys=True, allow_nan=False)
    assert again == encoded, f"[{label}] facts() changed between two calls"
    return TransformRun(bytes(out), json.loads(encoded))


def _first_difference(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _fresh(make_stage: StageFactory, seen: list[Stage]) -> Stage:
    stage = make_stage()
    assert isinstance(stage, Stage), \
        f"the stage factory returned {type(stage).__name__}, not a Stage"
    assert all(stage is not s for s in seen), \
        "the stage factory returned a stage it had returned before; it must build a fresh one"
    seen.append(stage)
    return stage


def check_transform(make_stage: StageFactory, inputs: list[bytes], *, seed: int = 0,
                    rounds: int = 20) -> list[TransformRun]:
    """Assert that output and facts of fresh stages do not depend on input chunking.

    Every input is fed whole, whole between empty chunks, in 1-byte chunks interleaved
    with empty ones, and in ``rounds`` random chunkings (deterministic for ``seed``).
    Returns the whole-input run of each input, for further assertions.
    """
    results = []
    for n, data in enumerate(inputs):
        seen: list[Stage] = []
        reference: TransformRun | None = None
        for label, chunks in chunkings(data, seed=seed + n, rounds=rounds):
            where = f"input #{n} ({len(data)} bytes), {label}"
            try:
                run = run_stage(_fresh(make_stage, seen), chunks, where)
            except TransformError as exc:
                raise AssertionError(
                    f"[{where}] the stage refused the input: {exc} (inputs it should refuse "
                    "belong in check_transform_rejects)") from exc
            if reference is None:
                reference = run
                continue
            if run.output != reference.output:
                at = _first_difference(run.output, reference.output)
                raise AssertionError(
                    f"[{where}] output differs from the whole-input output: "
                    f"{len(run.output)} vs {len(reference.output)} bytes, first difference "
                    f"at byte {at}")
            assert run.facts == reference.facts, \
                f"[{where}] facts differ from the whole-input facts: {run.facts!r} " \
                f"vs {reference.facts!r}"
        results.append(reference)
    return results


def check_transform_rejects(make_stage: StageFactory, inputs: list[bytes], *,
                            seed: int = 0, rounds: int = 5,
                            error: type[Exception] = TransformError) -> list[str]:
    """Assert that every chunking of every input raises ``error`` (with a message) at
    some ``feed`` or at ``finish``. Returns the message of each input fed whole."""
    messages = []
    for n, data in enumerate(inputs):
        seen: list[Stage] = []
        for label, chunks in chunkings(data, seed=seed + n, rounds=rounds):
            where = f"bad input #{n} ({len(data)} bytes), {label}"
            stage = _fresh(make_stage, seen)
            try:
                run_stage(stage, chunks, where)
            except error as exc:
                assert str(exc), f"[{where}] {type(exc).__name__} has an empty message"
                if label == "whole":
                    messages.append(str(exc))
                continue
            raise AssertionError(f"[{where}] was accepted, expected {error.__name__}")
    return messages


class TransformContract:
    """Base class of a transform's contract tests.

    Provide ``transform`` (an instance; the stages are built from it) or, for a bare
    stage, ``stage_factory``. ``sample_inputs`` (default :func:`default_inputs`) must be
    accepted; ``bad_inputs`` (default none) must be refused with ``TransformError``.
    """

    seed = 0
    rounds = 20

    @pytest.fixture
    def transform(self) -> Transform | None:
        return None

    @pytest.fixture
    def stage_factory(self, transform) -> StageFactory:
        if transform is None:
            raise NotImplementedError("subclasses of TransformContract provide a 'transform' "
                                      "or a 'stage_factory' fixture")
        return lambda: transform.stage(sample_context())

    @pytest.fixture
    def sample_inputs(self) -> list[bytes]:
        return default_inputs()

    @pytest.fixture
    def bad_inputs(self) -> list[bytes]:
        return []

    def test_output_does_not_depend_on_chunking(self, stage_factory, sample_inputs):
        assert sample_inputs, "sample_inputs is empty"
        check_transform(stage_factory, sample_inputs, seed=self.seed, rounds=self.rounds)

    def test_empty_input_is_handled_consistently(self, stage_factory):
        outcomes = set()
        for label, chunks in (("no feed", []), ("one empty chunk", [b""]),
                              ("three empty chunks", [b"", b"", b""])):
            try:
                run = run_stage(stage_factory(), chunks, f"empty input, {label}")
                outcomes.add(("output", run.output, json.dumps(run.facts, sort_keys=True)))
            except TransformError as exc:
                outcomes.add(("refused", type(exc).__name__, ""))
        assert len(outcomes) == 1, f"empty input gives different outcomes: {outcomes}"

    def test_bad_inputs_are_refused_in_every_chunking(self, stage_factory, bad_inputs):
        if not bad_inputs:
            pytest.skip("no bad_inputs for this transform")
        check_transform_rejects(stage_factory, bad_inputs, seed=self.seed)

    def test_changes_bytes_is_truthful(self, transform, stage_factory, sample_inputs):
        if transform is None or transform.changes_bytes:
            pytest.skip("the transform may change bytes")
        for n, run in enumerate(check_transform(stage_factory, sample_inputs, rounds=0)):
            assert run.output == sample_inputs[n], \
                f"input #{n}: changes_bytes is False but the output differs from the input"

    def test_digest_algorithms_are_reported(self, transform, stage_factory, sample_inputs):
        algorithms = transform.digest_algorithms() if transform is not None else ()
        if not algorithms:
            pytest.skip("the transform reports no digests")
        assert not transform.changes_bytes, \
            "digest_algorithms() is only meaningful with changes_bytes = False"
        for run in check_transform(stage_factory, sample_inputs, rounds=0):
            digests = run.facts.get("digests", {})
            for algorithm in algorithms:
                value = digests.get(algorithm)
                assert isinstance(value, str) and value, \
                    f"facts()['digests'] lacks {algorithm!r}: {digests!r}"

    def test_config_refuses_unknown_keys(self, transform):
        if transform is None:
            pytest.skip("no transform instance")
        from pydantic import ValidationError

        with pytest.raises(ValidationError):
            type(transform).Config(no_such_option_for_the_contract=1)

    def test_rename_returns_a_safe_key(self, transform):
        if transform is None:
            pytest.skip("no transform instance")
        for key in ("p/j/data/artifacts/report.json", "p/j/data/artifacts/report.json.gz",
                    "p/j/data/artifacts/.gz", "p/j/data/artifacts/..gz", "x"):
            got = transform.rename(key)
            assert isinstance(got, str) and got, f"rename({key!r}) returned {got!r}"
            segments = got.split("/")
            assert not got.startswith("/") and all(s not in ("", ".", "..") for s in segments), \
                f"rename({key!r}) returned an unsafe key {got!r}"

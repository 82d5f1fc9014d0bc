"""Transform chains for one artifact, and which digest measures which bytes.

The pipeline-level (common) chain runs once per artifact; its output is split into one
chain per sink (the sink's own ``transforms:``, possibly empty). Digests:

* **received**: the bytes exactly as served. Taken from a checksum stage placed before
  any byte-changing transform of the common chain, or from an implicit SHA-256 stage
  at its start.
* **stored**: the bytes a sink stores. Equal to *received* when no transform on the way
  changes bytes; otherwise taken from a checksum stage after the last byte-changing
  transform, or from an implicit SHA-256 stage appended after it.

So the default configuration hashes each byte once, and every stored copy records both
digests. Each stage's facts are kept with its position and what it measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from .components import ArtifactContext, Stage, Transform
from .digests import digest_stage
from .errors import TransformError


@dataclass
class _Slot:
    label: str          # "common[0]", "sinks.primary[1]", "implicit"
    name: str           # transform type
    stage: Stage
    changes: bool
    measures: str = "intermediate"   # "received" | "stored" | "intermediate"


@dataclass
class Chain:
    """An ordered list of stages fed chunk by chunk."""

    slots: list[_Slot] = field(default_factory=list)
    where: str = ""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Output pieces for ``chunk``; each piece has passed every stage."""
        return self._push(0, chunk)

    def finish(self) -> Iterator[bytes]:
        for i, slot in enumerate(self.slots):
            for piece in self._guard(slot, slot.stage.iter_finish()):
                yield from self._push(i + 1, piece)

    def _push(self, i: int, chunk: bytes) -> Iterator[bytes]:
        if i == len(self.slots):
            yield chunk
            return
        slot = self.slots[i]
        for piece in self._guard(slot, slot.stage.iter_feed(chunk)):
            yield from self._push(i + 1, piece)

    def _guard(self, slot: _Slot, pieces: Iterator[bytes]) -> Iterator[bytes]:
        """Non-empty pieces of one stage; its errors name the transform and position."""
        try:
            for piece in pieces:
                if piece:
                    yield piece
        except TransformError as exc:
            raise TransformError(f"transform {slot.name} ({slot.label}): {exc}") from exc
        except Exception as exc:  # a plugin bug must fail this artifact, not the run
            raise TransformError(f"transform {slot.name} ({slot.label}) raised "
                                 f"{type(exc).__name__}: {exc}") from exc

    @property
    def changes_bytes(self) -> bool:
        return any(s.changes for s in self.slots)

    def digests(self, measures: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for slot in self.slots:
            if slot.measures == measures:
                out.update(slot.stage.facts().get("digests", {}))
        return out

    def facts(self) -> list[dict[str, Any]]:
        return [{"transform": s.name, "position": s.label, "measures": s.measures,
                 "facts": s.stage.facts()} for s in self.slots]


def _build(transforms: list[Transform], ctx: ArtifactContext, prefix: str,
           *, received: bool, stored: bool) -> Chain:
    slots = [_Slot(f"{prefix}[{i}]", t.name, t.stage(ctx), t.changes_bytes)
             for i, t in enumerate(transforms)]
    algos = [t.digest_algorithms() for t in transforms]
    first_change = next((i for i, s in enumerate(slots) if s.changes), len(slots))
    last_change = max((i for i, s in enumerate(slots) if s.changes), default=-1)
    if received:
        for i in range(first_change):
            if algos[i]:
                slots[i].measures = "received"
        if not any("sha256" in algos[i] for i in range(first_change)):
            slots.insert(0, _Slot("implicit", "sha256", digest_stage(("sha256",)), False, "received"))
            algos.insert(0, ("sha256",))
            last_change += 1 if last_change >= 0 else 0
    if stored and last_change >= 0:
        tail = range(last_change + 1, len(slots))
        for i in tail:
            if algos[i]:
                slots[i].measures = "stored"
        if not any("sha256" in algos[i] for i in tail):
            slots.append(_Slot("implicit", "sha256", digest_stage(("sha256",)), False, "stored"))
    return Chain(slots, prefix)


def build_chains(common: list[Transform], per_sink: dict[str, list[Transform]],
                 ctx: ArtifactContext) -> tuple[Chain, dict[str, Chain]]:
    """The common chain and one chain per sink, with digest stages placed as above."""
    head = _build(common, ctx, "transforms", received=True, stored=True)
    sinks = {}
    for name, transforms in per_sink.items():
        sub = ArtifactContext(ctx.job, ctx.artifact, ctx.key, name, ctx.extra)
        sinks[name] = _build(transforms, sub, f"sinks.{name}.transforms", received=False,
                             stored=True)
    return head, sinks


def stored_digests(head: Chain, own: Chain) -> dict[str, str]:
    if own.changes_bytes:
        return own.digests("stored")
    base = head.digests("stored") if head.changes_bytes else head.digests("received")
    # checksum stages in a sink chain that changes nothing measure the same bytes
    return {**base, **own.digests("intermediate")}


def chain_facts(head: Chain, own: Chain) -> list[dict[str, Any]]:
    facts = head.facts() + own.facts()
    if not head.changes_bytes and not own.changes_bytes:
        for f in facts:
            if f["measures"] == "received":
                f["measures"] = "received+stored"
    return facts

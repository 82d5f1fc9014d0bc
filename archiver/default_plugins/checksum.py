"""The ``checksum`` transform: digests of the bytes passing a point of a chain.

It never changes bytes (``feed`` returns the very chunk it was given), so where it sits
decides what it measures: before any byte-changing transform it measures the bytes as
received from the API, after the last one the bytes as stored (see
:mod:`archiver.chain`). The stage itself lives in the core (:mod:`archiver.digests`),
which also places the implicit SHA-256 digests.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from archiver.components import ArtifactContext, ComponentConfig, Stage, Transform, no_repeats
from archiver.digests import (  # noqa: F401 - re-exported for plugins and tests
    ALGORITHMS,
    Algorithm,
    ChecksumStage,
    crc32c_implementation,
    digest_stage,
)
from archiver.hookspecs import hookimpl


class ChecksumConfig(ComponentConfig):
    algorithms: list[Algorithm] = Field(default_factory=lambda: ["sha256"], min_length=1)

    _unique = field_validator("algorithms")(no_repeats)


class ChecksumTransform(Transform):
    """``type: checksum``: records digests of the bytes at its place in the chain.

    YAML::

        transforms:
          - type: checksum
            algorithms: [sha256, md5, crc32c]
    """

    name = "checksum"
    Config = ChecksumConfig
    changes_bytes = False
    config: ChecksumConfig

    def stage(self, ctx: ArtifactContext) -> Stage:
        return ChecksumStage(self.config.algorithms)

    def digest_algorithms(self) -> tuple[str, ...]:
        return tuple(self.config.algorithms)


@hookimpl
def archiver_register_transforms(register) -> None:
    register(ChecksumTransform)

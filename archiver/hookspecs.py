"""Every hook archiver calls, with its contract.

Plugins implement these with ``@archiver.hookimpl`` and are found through the entry-point
group ``archiver`` (built-ins included). Bytes never cross a hook: hooks register
components (and ledger backends), filter and name artifacts, and observe outcomes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import click

    from .components import Sink
    from .model import Artifact, ArtifactResult, Job

hookspec = pluggy.HookspecMarker("archiver")
hookimpl = pluggy.HookimplMarker("archiver")


@hookspec
def archiver_register_sources(register: Callable[[type], None]) -> None:
    """Register source component classes by calling ``register(cls)``.

    ``cls`` subclasses :class:`archiver.components.Source` and carries ``name`` (the YAML
    ``source.type``) and ``Config``. Two plugins registering the same name is an error
    naming both plugins.

    All implementations run; return value ignored.
    """


@hookspec
def archiver_register_transforms(register: Callable[[type], None]) -> None:
    """Register transform component classes by calling ``register(cls)``.

    ``cls`` subclasses :class:`archiver.components.Transform`; ``name`` is the YAML
    ``transforms[].type``.

    All implementations run; return value ignored.
    """


@hookspec
def archiver_register_sinks(register: Callable[[type], None]) -> None:
    """Register sink component classes by calling ``register(cls)``.

    ``cls`` subclasses :class:`archiver.components.Sink`; ``name`` is the YAML
    ``sinks[].type``.

    All implementations run; return value ignored.
    """


@hookspec
def archiver_register_dispatchers(register: Callable[[type], None]) -> None:
    """Register dispatcher classes by calling ``register(cls)``.

    ``cls`` subclasses :class:`archiver.dispatch.Dispatcher`; ``name`` is the YAML
    ``dispatch.mode`` it serves and also the top-level YAML section holding its options
    (validated against ``cls.Config``). Registering must not import the dispatcher's
    client library (``archiver --help`` stays fast): import it in ``start``.

    All implementations run; return value ignored.
    """


@hookspec
def archiver_register_sections(register: Callable[[type], None]) -> None:
    """Register plugin-owned top-level YAML sections by calling ``register(cls)``.

    ``cls.name`` is the top-level key (``notify``) and ``cls.Config`` (a pydantic model,
    e.g. :class:`archiver.components.ComponentConfig`) validates its mapping; errors name
    the YAML path (``notify.endpoints[0].url``). Once the whole file is valid the core
    builds ``cls(config)`` for each section present and keeps it in
    ``LoadedConfig.sections[name]``; the constructor must do no I/O and start nothing
    (``config check`` builds it too). A name that is a core setting or a dispatcher's, or
    registered twice, is an error.

    All implementations run; return value ignored.
    """


@hookspec
def archiver_register_commands(cli: "click.Group") -> None:
    """Add commands to the ``archiver`` command line, e.g. ``@cli.command()``.

    All implementations run; return value ignored.
    """


@hookspec
def archiver_register_ledgers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register ledger backends by calling ``register(scheme, opener)``.

    ``scheme`` is a ``ledger.url`` scheme (``"postgresql"``, matched case-insensitively);
    ``opener(url, *, settings, create, read_only)`` returns an
    :class:`archiver.ledger.Ledger` (``url`` is the plain URL, password included: never
    log it), and is also called with ``migrate=True`` by ``archiver ledger migrate``. It
    is called after the plugin manager is built, so registering must not connect or
    import a database driver. The schemes of the plugin manager built last are those
    :func:`archiver.ledger.open_ledger` knows (besides the built-in ``sqlite``); two
    plugins registering one scheme, or a plugin registering ``sqlite``, is an error
    naming them.

    All implementations run; return value ignored.
    """


@hookspec(firstresult=True)
def archiver_ignore_artifact(job: "Job", artifact: "Artifact") -> bool | None:
    """Return True to skip ``artifact`` of ``job`` (it is neither downloaded nor stored,
    and the job can still be archived); False to force keeping it; None to abstain.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def archiver_artifact_key(job: "Job", artifact: "Artifact", sink: "Sink",
                          default: str) -> str | None:
    """Return the relative object key of ``artifact`` in ``sink`` (before the sink's own
    root or prefix), or None to abstain. ``default`` is the key of the standard layout
    ``{project_id}/{job_id}/data/artifacts/<sanitised path>``. Whatever is returned goes
    through :func:`archiver.keys.sanitize_key`, so it can never escape the sink's root.

    Stops at first non-None result.
    """


@hookspec
def archiver_artifact_done(job: "Job", artifact: "Artifact | None",
                           result: "ArtifactResult") -> None:
    """Called once per artifact (and for ``job.json``/``result.json``, with
    ``artifact=None`` and ``result.kind`` set) after every sink committed or failed.
    ``result.errors`` is empty on success. Raising here is logged, never fatal.

    All implementations run; return value ignored.
    """


@hookspec
def archiver_job_done(job: "Job", state: str, results: "list[ArtifactResult]") -> None:
    """Called once per processed job with its final ``state`` (``archived``,
    ``incomplete``, ``nothing_to_store``, ``lost``) and every artifact result of this run.
    Raising here is logged, never fatal.

    All implementations run; return value ignored.
    """



@hookspec
def archiver_job_expiring(job: "Job", state: str, expires_in: float, message: str) -> None:
    """Called when an open job (``state`` ``waiting`` or ``incomplete``) is first warned
    about because its ``expiresAt`` is ``expires_in`` seconds away, within
    ``watch.expiry_warning``: once per job and ledger (when the ``expiry_warning`` event
    is recorded). ``job`` is built from the job as last read from the API; ``message``
    is the warning line. Raising here is logged, never fatal.

    All implementations run; return value ignored.
    """

HOOK_NAMES: tuple[str, ...] = tuple(
    name for name in dict(globals()) if name.startswith("archiver_")
)


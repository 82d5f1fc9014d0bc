"""Logging for every command: ``-v``/``-q``/``--log-format`` (before or after the
command name), the levels they give, the text and JSON formats, and the redaction of
credentials from every line.

Levels (docs/cli.md, "Logging"):

* archiver's own loggers (``archiver.*``, plugin loggers named ``archiver_*``): WARNING,
  ``-v`` INFO, ``-vv`` DEBUG; services (``watch``, ``serve``, a standalone ``worker``) log
  at INFO by default. ``-q``: errors only.
* every other library (urllib3, botocore, google-auth ...): WARNING, whatever ``-v`` or
  ``-vv`` say; ``-vvv`` lets their DEBUG lines through as well.

Every line goes through :class:`Redactor`: ``Authorization`` / ``Proxy-Authorization`` /
``X-Amz-Security-Token`` / ``x-goog-*`` header values, Bearer tokens, signatures and
tokens in URLs, and every secret of the loaded configuration (the API key, webhook
secrets, passwords: :func:`remember_secrets`) are replaced by ``[REDACTED]``, whatever
the level and whoever logs.

Standard library and click only: imported by ``archiver --help``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

META_VERBOSE, META_QUIET, META_FORMAT = "archiver.verbose", "archiver.quiet", "archiver.log_format"
META_CONFIG = "archiver.config"    # (path, origin) of the configuration file in use
FORMAT_ENV = "ARCHIVER_LOG_FORMAT"
SERVICES = frozenset({"watch", "serve", "worker"})
# Libraries known to log a lot at DEBUG: set to the library level explicitly, so that
# they do not even build their debug records unless -vvv.
NOISY = ("urllib3", "botocore", "boto3", "s3transfer", "google", "google_auth_httplib2",
         "requests", "charset_normalizer", "filelock", "asyncio", "moto", "werkzeug",
         "httpx", "httpcore")
REDACTED = "[REDACTED]"

log = logging.getLogger("archiver.cli")


# --------------------------------------------------------------------------- redaction

_NAMES = (r"(?:proxy-)?authorization|x-amz-security-token|x-amz-credential|x-amz-signature"
          r"|x-goog-[a-z0-9-]+|x-api-key|api-key|cookie|set-cookie")
_QUOTED = re.compile(rf"(?i)(\b(?:{_NAMES}))(['\"]?\s*[:=]\s*b?)(['\"])(.*?)(?<!\\)(\3)")
_BARE = re.compile(rf"(?i)(\b(?:{_NAMES}))(\s*[:=]\s*)(?!b?['\"])(?!\[REDACTED\])([^\r\n]+)")
_QUERY = re.compile(r"(?i)([?&;](?:x-amz-signature|x-amz-credential|x-amz-security-token"
                    r"|x-goog-signature|x-goog-credential|signature|sig|token|access_token"
                    r"|api_key|apikey|key|upload_id|uploadid)=)[^&\s'\"#<>]+")
_BEARER = re.compile(r"(?i)\b((?:bearer|basic)\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=:-]{4,}")
_SIGNATURE = re.compile(r"(?i)\b(signature\s*[:=]\s*)[0-9a-f]{16,}")


class Redactor:
    """Removes credentials from text (see the module doc); thread-safe."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        """Never show ``secret`` (values shorter than 4 characters are ignored: too many
        false hits, and no real key is that short)."""
        if secret and len(secret) >= 4 and secret not in self._secrets:
            with self._lock:
                self._secrets = tuple(sorted({*self._secrets, secret}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if not any(c in text for c in ":=?&") and "earer" not in text and "asic" not in text:
            return text  # nothing a header, query or token could hide in
        text = _QUOTED.sub(lambda m: f"{m[1]}{m[2]}{m[3]}{REDACTED}{m[5]}", text)
        text = _BARE.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
        text = _QUERY.sub(lambda m: m[1] + REDACTED, text)
        text = _BEARER.sub(lambda m: m[1] + REDACTED, text)
        return _SIGNATURE.sub(lambda m: m[1] + REDACTED, text)


redact = Redactor()


def remember_secrets(loaded: Any) -> None:
    """Register every secret value (pydantic ``SecretStr``) of a loaded configuration:
    the source's, sinks', transforms' and dispatcher's options, plugin sections and the
    settings (webhook secrets, ledger URL)."""
    roots = [getattr(loaded, "settings", None)]
    source = getattr(loaded, "source", None)
    roots.append(getattr(source, "config", None))
    roots += [getattr(b, "config", None) for b in getattr(loaded, "sinks", ()) or ()]
    roots += [getattr(b, "config", None) for b in getattr(loaded, "transforms", ()) or ()]
    roots.append(getattr(getattr(loaded, "dispatcher", None), "config", None))
    for section in (getattr(loaded, "sections", None) or {}).values():
        roots.append(getattr(section, "config", section))
    for root in roots:
        _walk_secrets(root, 0)


def _walk_secrets(value: Any, depth: int) -> None:
    if value is None or depth > 4:
        return
    if hasattr(value, "get_secret_value"):
        secret = value.get_secret_value()
        if isinstance(secret, str):
            redact.add(secret)
            if "://" in secret and "@" in secret:  # a URL with a password: the password too
                creds = secret.split("://", 1)[1].split("@", 1)[0]
                redact.add(creds.split(":", 1)[1] if ":" in creds else None)
        return
    fields = getattr(type(value), "model_fields", None)
    if fields is not None:
        for name in fields:
            _walk_secrets(getattr(value, name, None), depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _walk_secrets(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _walk_secrets(item, depth + 1)


# --------------------------------------------------------------------------- formats

class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
    ``logger``, ``message``, the ``extra`` fields of the call (``job_id``, ``objects``,
    ``bytes``, ``sinks`` ...) and ``exception`` (the traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {"time": f"{ts}.{int(record.msecs):03d}Z",
                               "level": record.levelname.lower(), "logger": record.name,
                               "message": redact(record.getMessage())}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = _plain(value)
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = redact(record.exc_text)
        return json.dumps(doc, ensure_ascii=False, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return redact(str(value))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a progress display redirects it,
    so log lines appear above the bars instead of through them)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def ours(name: str) -> bool:
    return name == "archiver" or name.startswith(("archiver.", "archiver_"))


class _ByOrigin(logging.Filter):
    """archiver's records from ``ours``, everybody else's from ``libs``."""

    def __init__(self, ours_level: int, libs_level: int):
        super().__init__()
        self.ours_level, self.libs_level = ours_level, libs_level

    def filter(self, record: logging.LogRecord) -> bool:
        limit = self.ours_level if ours(record.name) else self.libs_level
        return record.levelno >= limit


def levels(verbose: int, quiet: bool, service: bool) -> tuple[int, int]:
    """(archiver's level, the libraries' level)."""
    if quiet:
        return logging.ERROR, logging.ERROR
    mine = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    if service:
        mine = min(mine, logging.INFO)
    return mine, (logging.DEBUG if verbose >= 3 else logging.WARNING)


def install(verbose: int = 0, quiet: bool = False, fmt: str = "text",
            service: bool = False) -> Callable[[], None]:
    """Configure the root logger for one command; returns the function that undoes it
    (tests run many commands in one process)."""
    mine, libs = levels(verbose, quiet, service)
    root = logging.getLogger()
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ByOrigin(mine, libs))
    handler._archiver = True  # type: ignore[attr-defined]
    for old in [h for h in root.handlers if getattr(h, "_archiver", False)]:
        root.removeHandler(old)
    saved = root.level, {name: logging.getLogger(name).level for name in NOISY}
    root.addHandler(handler)
    root.setLevel(min(mine, libs))
    for name in NOISY:
        logging.getLogger(name).setLevel(libs)

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)

    return undo


# --------------------------------------------------------------------------- options

def _meta(ctx: click.Context) -> dict:
    return ctx.find_root().meta


def _verbose(ctx: click.Context, param, value: int) -> None:
    if value:
        _meta(ctx)[META_VERBOSE] = _meta(ctx).get(META_VERBOSE, 0) + value


def _quiet(ctx: click.Context, param, value: bool) -> None:
    if value:
        _meta(ctx)[META_QUIET] = True


def _format(ctx: click.Context, param, value: str | None) -> None:
    if value:
        _meta(ctx)[META_FORMAT] = value


def shared_options() -> list[click.Option]:
    """``-v``, ``-q`` and ``--log-format``: every command has them, and so has the group,
    so that they may come before or after the command name."""
    return [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_verbose,
                     help="More logs: -v info, -vv debug, -vvv the libraries' debug too."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_quiet,
                     help="Errors only: no progress, no summary line, no warnings."),
        click.Option(["--log-format"], type=click.Choice(["text", "json"]), default=None,
                     expose_value=False, callback=_format,
                     help=f"Log lines as text or one JSON object per line "
                          f"(default: ${FORMAT_ENV}, else text)."),
    ]


def verbosity(ctx: click.Context | None = None) -> int:
    ctx = ctx or click.get_current_context(silent=True)
    return int(_meta(ctx).get(META_VERBOSE, 0)) if ctx is not None else 0


def quiet(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    return bool(_meta(ctx).get(META_QUIET)) if ctx is not None else False


def log_format(ctx: click.Context | None = None) -> str:
    ctx = ctx or click.get_current_context(silent=True)
    chosen = _meta(ctx).get(META_FORMAT) if ctx is not None else None
    fmt = chosen or os.environ.get(FORMAT_ENV) or "text"
    return fmt if fmt in ("text", "json") else "text"


@contextmanager
def configured(ctx: click.Context, service: bool) -> Iterator[None]:
    """Logging as the options of ``ctx`` say, for the body of one command."""
    fmt = log_format(ctx)
    if fmt == "json":
        os.environ[FORMAT_ENV] = "json"  # worker processes log the same way
    undo = install(verbosity(ctx), quiet(ctx), fmt, service)
    try:
        config = _meta(ctx).get(META_CONFIG)
        if config is not None:
            log.info("configuration: %s (%s)", *config)
        yield
    finally:
        undo()


def prepare(cmd: click.Command) -> click.Command:
    """Give ``cmd`` (and, for a group, its subcommands) the shared options, and make its
    body run with logging configured. Idempotent."""
    if getattr(cmd, "_archiver_prepared", False):
        return cmd
    cmd._archiver_prepared = True  # type: ignore[attr-defined]
    taken = {opt for p in cmd.params for opt in getattr(p, "opts", ())}
    cmd.params.extend(o for o in shared_options() if not set(o.opts) & taken)
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            prepare(sub)
    elif cmd.callback is not None:
        cmd.callback = _with_logging(cmd.callback, cmd.name or "")
    return cmd


def _with_logging(callback: Callable, name: str) -> Callable:
    @functools.wraps(callback)
    def run(*args, **kwargs):
        ctx = click.get_current_context()
        # a worker started by a supervisor (--jsonl) logs like its supervisor, not at INFO
        service = name in SERVICES and not kwargs.get("jsonl")
        with configured(ctx, service):
            return callback(*args, **kwargs)

    return run


__all__ = ["JsonFormatter", "Redactor", "StderrHandler", "TextFormatter", "configured",
           "install", "levels", "log_format", "prepare", "quiet", "redact",
           "remember_secrets", "shared_options", "verbosity"]

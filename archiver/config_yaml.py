"""The YAML layer of the configuration: read, parse, line numbers, ``${VAR}``, messages.

Loading is total: whatever the file holds, the result is data or a :class:`ConfigError`,
quickly and in bounded memory. The file is read at most :data:`MAX_BYTES`; a streaming
pass over the parser's events refuses documents that are too deep, too big or whose
aliases would expand beyond :data:`MAX_NODES` (PyYAML shares aliased objects, but
everything walking the tree afterwards, pydantic included, sees them expanded) before
anything builds a tree.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ByteSize, TypeAdapter, ValidationError

from .errors import ConfigError

MAX_BYTES = 1 << 20   # a configuration is a few KiB; anything this big is a wrong file
MAX_NODES = 10_000    # YAML nodes after expanding aliases
MAX_DEPTH = 32        # nesting levels (the deepest real key is ~6)
MAX_LISTED = 40       # errors listed in one message

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 20x faster
_STR_TAG, _MERGE_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"


def read_text(file: str) -> str:
    """The file's text, refusing (without reading them) files larger than MAX_BYTES."""
    try:
        with open(file, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read configuration: "
                          f"{exc.strerror or exc.__class__.__name__}") from None
    check_size(file, len(raw))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{file}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at "
                          f"offset {exc.start}); save the file as UTF-8") from None


def check_size(file: str, size: int) -> None:
    if size > MAX_BYTES:
        raise ConfigError(f"{file}: larger than {human_bytes(MAX_BYTES)}: not a configuration "
                          "file (is it the right path?)")


# --------------------------------------------------------------------------- parsing

def _bound_events(text: str, file: str) -> None:
    """Refuse deep, huge or alias-bomb documents from the event stream alone (no tree).

    Each open collection counts its expanded size and height; an anchor remembers both, so
    an alias costs what it expands to."""
    stack: list[list] = []                 # [size, height, anchor] per open collection
    anchors: dict[str, tuple[int, int]] = {}
    total = 0

    def fail(line: int, problem: str) -> typing.NoReturn:
        raise ConfigError(f"{file}:{line}: {problem}")

    for ev in yaml.parse(text, Loader=_Loader):
        line = ev.start_mark.line + 1
        if isinstance(ev, yaml.CollectionStartEvent):
            stack.append([1, 0, ev.anchor])
            total += 1
            if len(stack) > MAX_DEPTH:
                fail(line, f"nested more than {MAX_DEPTH} levels deep")
            continue
        if isinstance(ev, yaml.CollectionEndEvent):
            size, height, anchor = stack.pop()
            if anchor:
                anchors[anchor] = (size, height)
        elif isinstance(ev, yaml.AliasEvent):
            if any(f[2] == ev.anchor for f in stack):  # still open: a cycle
                fail(line, f"alias *{ev.anchor} refers to a collection containing it")
            size, height = anchors.get(ev.anchor, (1, 0))  # undefined: compose reports it
            total += size
        elif isinstance(ev, yaml.ScalarEvent):
            size, height = 1, 0
            total += 1
            if ev.anchor:
                anchors[ev.anchor] = (1, 0)
        else:
            continue
        if stack:
            stack[-1][0] += size
            stack[-1][1] = max(stack[-1][1], height + 1)
        if len(stack) + height > MAX_DEPTH:
            fail(line, f"nested more than {MAX_DEPTH} levels deep (through aliases)")
        if total > MAX_NODES:
            fail(line, f"more than {MAX_NODES} YAML nodes (aliases expanded): not a "
                       "configuration")


def _walk(root: yaml.Node, file: str) -> dict[str, int]:
    """YAML path -> 1-based line; refuses non-string and duplicate keys (PyYAML silently
    keeps the last of two equal keys, which hides a mistake)."""
    lines: dict[str, int] = {"": root.start_mark.line + 1}
    problems: list[str] = []
    todo: list[tuple[yaml.Node, str, bool]] = [(root, "", True)]
    while todo:  # iterative: bounded by MAX_NODES, not by the recursion limit
        node, path, own = todo.pop()
        if isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                sub = f"{path}[{i}]"
                lines.setdefault(sub, v.start_mark.line + 1)
                todo.append((v, sub, True))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                kline = k.start_mark.line + 1
                if k.tag == _MERGE_TAG:  # `<<: *base`: keys written here take precedence
                    for m in (v.value if isinstance(v, yaml.SequenceNode) else [v]):
                        todo.append((m, path, False))
                    continue
                if not isinstance(k, yaml.ScalarNode) or k.tag != _STR_TAG:
                    shown = k.value if isinstance(k, yaml.ScalarNode) else "a collection"
                    problems.append(f"{file}:{kline}: {path or '(top level)'}: key "
                                    f"{str(shown)[:40]!r} is not a string (quote it)")
                    continue
                if own and k.value in seen:
                    problems.append(f"{file}:{kline}: {_join(path, k.value)}: duplicate key "
                                    f"(first on line {seen[k.value]})")
                seen[k.value] = kline
                sub = _join(path, k.value)
                if own:
                    lines[sub] = kline
                else:
                    lines.setdefault(sub, kline)
                todo.append((v, sub, own))
    if problems:
        raise ConfigError(_listing(problems))
    return lines


def _bad_scalar_line(root: yaml.Node) -> int | None:
    """The line of the first scalar PyYAML cannot construct (the error does not say)."""
    constructor = yaml.SafeLoader("")
    todo, seen = [root], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            make = constructor.yaml_constructors.get(node.tag)
            try:
                if make is not None:
                    make(constructor, node)
            except Exception:  # noqa: BLE001 - any failure is the one being located
                return node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            todo.extend(n for pair in reversed(node.value) for n in reversed(pair))
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_yaml(text: str, file: str = "<config>") -> tuple[Any, dict[str, int]]:
    """``(data, lines)``: the document and YAML path -> line; ConfigError on any problem."""
    # A character is at least one byte: only texts that may fit are encoded to be measured.
    check_size(file, len(text) if len(text) > MAX_BYTES else
               len(text.encode("utf-8", "surrogatepass")))
    loader = node = None
    try:
        _bound_events(text, file)
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{file}: the configuration is empty")
        lines = _walk(node, file)
        data = loader.construct_document(node)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        ch = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or " ")
        raise ConfigError(f"{file}:{line}: invalid YAML: character U+{ch:04X} is not allowed "
                          "(no control characters)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        raise ConfigError(f"{where}: invalid YAML: {problem}"
                          + (f" ({context})" if context else "")) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors raise these on e.g. `2001-13-01` (a timestamp with month 13).
        line = _bad_scalar_line(node) if node is not None else None
        where = f"{file}:{line}" if line else file
        raise ConfigError(f"{where}: invalid YAML value: {exc} (quote it if it is text)") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        got = "a list" if isinstance(data, list) else f"a single {type(data).__name__} value"
        raise ConfigError(f"{file}: the configuration must be a YAML mapping of keys "
                          f"(source:, sinks:, ...), not {got}")
    return data, lines


# --------------------------------------------------------------------------- ${VAR}

# $$ | ${...} | ${ (unterminated) | $NAME (bare); any other `$` is literal.
_DOLLAR = re.compile(r"\$(?:(\$)|\{([^}]*)\}|(\{)|([A-Za-z_][A-Za-z0-9_]*))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRETISH = re.compile(r"key|secret|pass|token|url|credential", re.I)
# Needed even by commands that need no secret: without them they would open another ledger.
_ALWAYS_REQUIRED = ("state_dir", "ledger")


class Interpolation:
    """Replaces ``${VAR}``; ``used`` holds the YAML paths whose value referenced one."""

    def __init__(self, env: dict[str, str], errors: Errors, require_env: bool = True):
        self.env, self.errors, self.require_env = env, errors, require_env
        self.used: set[str] = set()

    def __call__(self, value: Any, path: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self(v, _join(path, str(k))) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return _DOLLAR.sub(lambda m: self._one(m, path), value)
        return value

    def _one(self, m: re.Match, path: str) -> str:
        escaped, braced, unterminated, bare = m.groups()
        if escaped:
            return "$"
        # A secret's own characters must not reach a message: name them only elsewhere.
        secretish = bool(_SECRETISH.search(path.rsplit(".", 1)[-1]))
        if unterminated:
            self.errors.add(path, "unterminated ${ (write ${NAME}, or $$ for a literal $)")
            return ""
        if bare is not None:
            hint = "${NAME}" if secretish else "${" + bare + "}"
            self.errors.add(path, f"use {hint}; write $$ for a literal $")
            return ""
        if not _NAME.fullmatch(braced):
            shown = "" if secretish else f" {'${' + braced[:40] + '}'!r}"
            self.errors.add(path, f"not a variable reference{shown}: write ${{NAME}} (letters, "
                                  "digits, _; no defaults), or $$ for a literal $")
            return ""
        self.used.add(path)
        if braced in self.env:
            return self.env[braced]
        if not self.require_env and not path.startswith(_ALWAYS_REQUIRED):
            return m.group(0)  # left as written; the caller needs no secret
        self.errors.add(path, f"environment variable {braced} is not set")
        return ""


# --------------------------------------------------------------------------- messages

def human_bytes(n: int) -> str:
    """``5 MiB``, ``1.5 KiB``, ``100 bytes``."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= unit:
            return f"{n / unit:.2f}".rstrip("0").rstrip(".") + f" {name}"
    return f"{n} bytes"


_BYTES = TypeAdapter(ByteSize)
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def _field_at(model: type | None, loc: tuple) -> tuple[type | None, Any]:
    """(model holding the last key of ``loc``, that field's annotation) by walking the
    annotations of ``model``; (None, None) where the walk leaves pydantic models."""
    ann: Any = model
    holder = None
    for part in loc:
        ann = _unwrap(ann, part)
        if isinstance(part, int):
            continue
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None, None
        holder = ann
        field = ann.model_fields.get(part)
        if field is None:
            return holder, None
        ann = field.annotation
    return holder, ann


def _unwrap(ann: Any, part: Any) -> Any:
    """The annotation inside Optional/list/dict containers for the next ``loc`` part."""
    for _ in range(8):
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin in (list, tuple, set, frozenset) and isinstance(part, int):
            ann = args[0] if args else None
        elif origin is dict and isinstance(part, str) and args:
            ann = args[1]
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return ann
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if not models:
                return ann
            ann = models[0]
        else:
            return ann
    return ann


class Errors:
    """Collects ``file:line: path: problem`` messages, raised together as one ConfigError."""

    def __init__(self, file: str, lines: dict[str, int]):
        self.file, self.lines, self.items = file, lines, []

    def line(self, path: str) -> int | None:
        """The line of ``path`` or of its nearest ancestor written in the file."""
        probe = path
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            parent = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", probe)
            # A top-level key has no parent expression left: stop (this used to loop forever).
            probe = parent if parent != probe else ""
        return None

    def where(self, path: str) -> str:
        line = self.line(path)
        return f"{self.file}:{line}: " if line else f"{self.file}: "

    def add(self, path: str, msg: str) -> None:
        self.items.append((self.line(path) or 0,
                           f"{self.where(path)}{path or '(top level)'}: {msg}"))

    def add_validation(self, exc: ValidationError, prefix: str = "", model: type | None = None,
                       extra_keys: tuple[str, ...] = ()) -> None:
        """pydantic errors, at their YAML paths; ``model`` (the validated class) gives
        "did you mean" for unknown keys and human sizes for ByteSize fields."""
        # Inputs are read for sizes only: any other input may be a secret.
        for err in exc.errors(include_url=False):
            # pydantic names its validator wrappers `function-after[...]` in locations;
            # a user's key may start with `function-` too, so only the wrappers go.
            loc = tuple(p for p in err["loc"]
                        if not (isinstance(p, str) and _WRAPPER.match(p)))
            path = _fmt_loc(loc, prefix)
            self.add(path, self._message(err, loc, path, model, extra_keys))

    def _message(self, err: dict, loc: tuple, path: str, model: type | None,
                 extra_keys: tuple[str, ...]) -> str:
        kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
        holder, ann = _field_at(model, loc)
        if kind == "extra_forbidden":
            names = list(holder.model_fields) if holder else []
            names += list(extra_keys) if len(loc) == 1 else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
        if kind == "missing":
            return "missing: " + _MISSING.get(path, "this key is required")
        if path == "sinks" and kind == "too_short":
            return "at least one sink is required"
        if ann is ByteSize and kind in _BOUNDS:
            key, words = _BOUNDS[kind]
            return f"must be {words} {human_bytes(int(err['ctx'][key]))}{_got(err.get('input'))}"
        return msg

    def raise_if_any(self) -> None:
        if self.items:  # in file order (sorted is stable: same-line problems keep theirs)
            raise ConfigError(_listing([m for _, m in sorted(self.items, key=lambda i: i[0])]))


_WRAPPER = re.compile(r"function-(after|before|wrap|plain)\[")


def _got(value: Any) -> str:
    try:
        return f" (got {human_bytes(int(_BYTES.validate_python(value)))})"
    except (ValidationError, TypeError, ValueError):
        return ""


_MISSING = {
    "sinks": "at least one sink is required (sinks: - name: ..., type: local, root: ...)",
    "source": "the source to archive from is required (source: type: plangrep, api_key: ...)",
}


def _listing(items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f"\n  ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "invalid configuration:\n  " + "\n  ".join(shown) + more


def _fmt_loc(loc: tuple, prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Errors", "Interpolation", "human_bytes",
           "parse_yaml", "read_text"]

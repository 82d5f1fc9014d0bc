"""docs/configuration.md documents exactly the settings the code has.

* Every key of the first YAML block (the reference) is a ``Settings`` field and every
  ``Settings`` field is a key of it; nested keys written there exist in their model.
* Every field of every nested settings model (``watch``, ``serve``, ``serve.secrets``,
  ``bagit``, ``lease``, ``ledger``, and any added later) is mentioned in a section whose
  heading names the model's path (or an ancestor's) in backticks: as ``name:`` in a YAML
  block or as `` `name` `` in the text.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from archiver.config import ComponentSpec, Settings, load_config

DOC = Path(__file__).parent.parent / "docs" / "configuration.md"


def _model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def settings_models(model: type[BaseModel] = Settings, path: str = ""):
    """(path, model) of every nested settings section; component specs are plugins' job."""
    for name, info in model.model_fields.items():
        sub = _model(info.annotation)
        if sub is not None and not issubclass(sub, ComponentSpec):
            yield f"{path}.{name}" if path else name, sub
            yield from settings_models(sub, f"{path}.{name}" if path else name)


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of each markdown section (fenced blocks kept whole)."""
    out, heading, body, fenced = [], "", [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,6} ", line):
            out.append((heading, "\n".join(body)))
            heading, body = line, []
        else:
            body.append(line)
    out.append((heading, "\n".join(body)))
    return out


def reference_block(text: str) -> str:
    return re.search(r"```yaml\n(.*?)```", text, re.S).group(1)


def mentioned(name: str, body: str) -> bool:
    in_yaml = any(re.search(rf"^\s*{re.escape(name)}:", block, re.M)
                  for block in re.findall(r"```yaml\n(.*?)```", body, re.S))
    return in_yaml or f"`{name}`" in body


def problems(text: str) -> list[str]:
    found: list[str] = []
    ref = reference_block(text)
    top = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*):", ref, re.M))
    fields = set(Settings.model_fields)
    found += [f"{k}: missing from the reference block" for k in sorted(fields - top)]
    found += [f"{k}: documented but not a setting" for k in sorted(top - fields)]
    data = yaml.safe_load(ref)
    for path, model in settings_models():
        value = data
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            found += [f"{path}.{k}: documented but not a setting" for k in value
                      if k not in model.model_fields]
        parts = path.split(".")
        names = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # path and ancestors
        bodies = [body for heading, body in sections(text)
                  if any(f"`{n}`" in heading for n in names)]
        if not bodies:
            found.append(f"{path}: no section with `{path}` in its heading")
            continue
        found += [f"{path}.{name}: not documented" for name in model.model_fields
                  if not any(mentioned(name, body) for body in bodies)]
    return found


def test_every_setting_is_documented_and_every_documented_key_exists():
    assert problems(DOC.read_text(encoding="utf-8")) == []


def test_the_check_notices_a_missing_or_invented_setting():
    text = DOC.read_text(encoding="utf-8")
    no_ttl = re.sub(r"\bttl(`|:)", r"tl\1", text)  # every mention of lease.ttl
    assert "lease.ttl: not documented" in problems(no_ttl)
    no_workers = re.sub(r"^workers:.*\n", "", text, flags=re.M)
    assert "workers: missing from the reference block" in problems(no_workers)
    invented = text.replace("\nworkers:", "\nwrokers: 1\nworkers:", 1)
    assert "wrokers: documented but not a setting" in problems(invented)
    nested = text.replace("  max_lost: 3\n", "  max_lost: 3\n  maximum: 1\n", 1)
    assert "lease.maximum: documented but not a setting" in problems(nested)


def test_the_reference_block_is_a_valid_configuration(plugins):
    ref = reference_block(DOC.read_text(encoding="utf-8"))
    env = {n: "dummy" for n in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", ref)}
    loaded = load_config("configuration.md", plugins.registry, text=ref, env=env)
    assert loaded.settings.workers == 1 and loaded.settings.lease.ttl == 60


def test_every_nested_model_is_checked():
    assert {p for p, _ in settings_models()} >= {"watch", "serve", "serve.secrets", "bagit",
                                                 "lease", "ledger"}


def test_the_docs_defaults_match_the_code():
    s = Settings(source={"type": "plangrep"}, sinks=[{"name": "a", "type": "local"}])
    assert (s.workers, s.lease.ttl, s.lease.heartbeat, s.lease.max_lost) == (1, 60, 20, 3)
    assert s.lease.self_fence is None and s.lease.effective_self_fence == 45
    assert (s.ledger.url, s.ledger.outage_tolerance, s.chunk_size) == (None, 60, 1 << 20)

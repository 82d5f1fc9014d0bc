"""The ``notify:`` section: validation by YAML path, secrets kept out of errors and reprs,
and the plugin listed by ``archiver plugins``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from notify_receiver import SECRET, SLACK_TOKEN

from archiver.cli import cli
from archiver.config import load_config
from archiver.errors import ConfigError
from archiver.plugins import build_plugin_manager
from archiver_notify import plugin

BASE = ("source: {type: plangrep, base_url: 'http://127.0.0.1:9', api_key: '${KEY}'}\n"
        "sinks: [{name: a, type: local, root: /tmp/archiver-notify-test}]\n")


def load(section: str, env=None):
    p = build_plugin_manager(entry_points=False, extra=[("notify", plugin)])
    return load_config("a.yaml", p.registry, text=BASE + section,
                       env={"KEY": "k", **(env or {})})


def test_a_valid_section_becomes_the_current_notifier():
    loaded = load("notify:\n  endpoints:\n    - {name: ops, url: 'https://h.example/x', "
                  "secret: '${S}', events: [lost]}\n    - {url: 'http://s', format: slack}\n",
                  {"S": SECRET})
    n = loaded.sections["notify"]
    assert plugin.current() is n
    assert [q.label for q in n.queues] == ["ops (https://h.example)",
                                           "endpoint-1 (http://s)"]
    assert n.config.endpoints[0].events == ["lost"]
    # a literal URL warns (Slack and Teams URLs hold a token); ${S} does not
    assert not any("secret:" in w or ".secret" in w for w in loaded.warnings)
    assert all(q._thread is None for q in n.queues)  # nothing started by loading


@pytest.mark.parametrize("endpoint, message", [
    ("{url: 'ftp://h/x'}", "notify.endpoints[0].url: must be an http"),
    ("{url: 'http://h', secret: 'plain'}", "notify.endpoints[0].secret: must be "
                                           "a Standard Webhooks secret"),
    ("{url: 'http://h', format: slack, secret: '" + SECRET + "'}",
     "notify.endpoints[0]: secret: only a webhook endpoint is signed"),
    ("{url: 'http://h', events: [archived, exploded]}", "notify.endpoints[0].events[1]"),
    ("{url: 'http://h', timeout: 0}", "notify.endpoints[0].timeout"),
    ("{url: 'http://h', urls: x}", "notify.endpoints[0].urls: unknown key"),
])
def test_bad_endpoints_are_reported_by_yaml_path(endpoint, message):
    with pytest.raises(ConfigError) as err:
        load(f"notify:\n  endpoints:\n    - {endpoint}\n")
    assert message in str(err.value)
    assert SECRET not in str(err.value)


def test_duplicate_names_and_a_wrong_section_shape():
    with pytest.raises(ConfigError, match="two endpoints are named 'a'"):
        load("notify:\n  endpoints: [{name: a, url: 'http://h'}, {name: a, url: 'http://i'}]\n")
    with pytest.raises(ConfigError, match="notify: must be a mapping of the notify section"):
        load("notify: [1]\n")


def test_secrets_stay_out_of_reprs_and_warn_when_literal():
    url = f"https://hooks.slack.com/services/{SLACK_TOKEN}"
    loaded = load(f"notify:\n  endpoints:\n    - {{url: '{url}', format: slack}}\n"
                  f"    - {{url: 'http://h', secret: '{SECRET}'}}\n")
    n = loaded.sections["notify"]
    text = repr(n) + repr(n.queues) + repr(n.config) + str(n.config.model_dump())
    assert SLACK_TOKEN not in text and SECRET not in text
    assert any("notify.endpoints[1].secret: a literal secret" in w for w in loaded.warnings)


def test_archiver_plugins_lists_notify(monkeypatch):
    monkeypatch.delenv("ARCHIVER_PLUGINS", raising=False)
    monkeypatch.delenv("ARCHIVER_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("ARCHIVER_LOAD_ENTRY_POINTS", raising=False)
    out = CliRunner().invoke(cli, ["plugins"]).output
    assert "notify 0.1.0" in out and "section:notify" in out
    assert "archiver_job_done" in out.split("notify 0.1.0", 1)[1].split("\n\n")[0]

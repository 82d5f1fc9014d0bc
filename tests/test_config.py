import pytest

from archiver.config import load_config
from archiver.errors import ConfigError

GOOD = """\
source:
  type: plangrep
  base_url: http://127.0.0.1:9/api/open/v1
  api_key: ${KEY}
  projects: [proj_1]
transforms:
  - type: checksum
    algorithms: [sha256]
sinks:
  - name: primary
    type: local
    root: ./archive
  - name: second
    type: local
    root: ./archive2
    transforms:
      - type: decompress
state_dir: ./.archiver
concurrency: 8
"""


def load(text, plugins, env=None):
    return load_config("cfg.yaml", plugins.registry, env={"KEY": "sekrit"} if env is None else env,
                       text=text)


def test_good_config_is_typed(plugins):
    cfg = load(GOOD, plugins)
    assert cfg.source.cls.name == "plangrep"
    assert cfg.source.config.api_key.get_secret_value() == "sekrit"
    assert [s.label for s in cfg.sinks] == ["primary", "second"]
    assert [t.cls.name for t in cfg.sink_transforms["second"]] == ["decompress"]
    assert cfg.settings.concurrency == 8
    assert "sekrit" not in repr(cfg)


def test_invalid_yaml_names_line(plugins):
    with pytest.raises(ConfigError) as exc:
        load("source:\n  type: [unclosed\n", plugins)
    assert "cfg.yaml:" in str(exc.value) and "invalid YAML" in str(exc.value)


def test_unknown_top_level_key(plugins):
    with pytest.raises(ConfigError) as exc:
        load(GOOD + "colour: blue\n", plugins)
    assert "colour: unknown key" in str(exc.value)


def test_unknown_component_key_names_yaml_path_and_line(plugins):
    text = GOOD.replace("    root: ./archive2\n", "    root: ./archive2\n    rooot: x\n")
    with pytest.raises(ConfigError) as exc:
        load(text, plugins)
    msg = str(exc.value)
    assert "sinks[1].rooot: unknown key" in msg
    assert "cfg.yaml:16:" in msg


def test_missing_required_component_key(plugins):
    text = GOOD.replace("    root: ./archive\n", "")
    with pytest.raises(ConfigError) as exc:
        load(text, plugins)
    assert "sinks[0].root" in str(exc.value)


def test_missing_env_var(plugins):
    with pytest.raises(ConfigError) as exc:
        load(GOOD, plugins, env={})
    assert "source.api_key: environment variable KEY is not set" in str(exc.value)


def test_dollar_escape(plugins):
    cfg = load(GOOD.replace("${KEY}", "a$$b"), plugins)
    assert cfg.source.config.api_key.get_secret_value() == "a$b"


def test_unknown_plugin_type(plugins):
    with pytest.raises(ConfigError) as exc:
        load(GOOD.replace("type: local\n    root: ./archive\n", "type: ftp\n    root: x\n"),
             plugins)
    assert "sinks[0].type" in str(exc.value) and "unknown sink type 'ftp'" in str(exc.value)


def test_missing_cloud_plugin_gives_install_hint(plugins):
    with pytest.raises(ConfigError) as exc:
        load(GOOD.replace("type: local\n    root: ./archive\n", "type: s3\n    bucket: b\n"),
             plugins)
    assert "pip install" in str(exc.value) and "archiver-s3" in str(exc.value)


def test_duplicate_sink_names(plugins):
    with pytest.raises(ConfigError) as exc:
        load(GOOD.replace("name: second", "name: primary"), plugins)
    assert "'primary' is used twice" in str(exc.value)


def test_bad_value_types(plugins):
    with pytest.raises(ConfigError) as exc:
        load(GOOD.replace("concurrency: 8", "concurrency: many"), plugins)
    assert "concurrency" in str(exc.value)


def test_not_a_mapping(plugins):
    with pytest.raises(ConfigError):
        load("- a\n- b\n", plugins)


def test_out_of_range_value(plugins):
    text = GOOD.replace("concurrency: 8", "concurrency: 0").replace("    root: ./archive\n", "")
    with pytest.raises(ConfigError) as exc:
        load(text, plugins)
    assert "concurrency" in str(exc.value)

"""Configuration: schema validation with errors naming key, value and expectation; defaults; secrets."""

from dataclasses import fields
from pathlib import Path

import pytest

from isic_common.errors import ConfigError
from isic_station import config as cfg
from isic_station.daemon.wiring import mqtt_settings
from isic_station.inference.registry import BACKENDS, KINDS
from isic_station.schemas import load_schema

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["bench-simulated.toml", "atlas-200dk.toml"])
def test_example_configs_are_valid(name: str) -> None:
    config = cfg.load_config(REPO / "config" / name)
    assert config.station.id
    assert config.outbox.path.is_absolute() and config.calibration.dir.is_absolute()


def test_defaults_come_from_the_schema(tmp_path: Path) -> None:
    config = cfg.load_config(write(tmp_path, '[station]\nid = "s1"\n'))
    assert config.mqtt.port == 1883 and config.mode.kind == "triggered" and config.station.prefix == "isic"
    assert config.topic_base == "isic/s1"
    assert config.model.manifest is None
    # state_dir defaults to $STATE_DIRECTORY or ./state beside the file; the outbox lives in it
    assert config.outbox.path.parent == config.station.state_dir


def test_state_directory_from_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/var:{tmp_path}/other")
    config = cfg.load_config(write(tmp_path, '[station]\nid = "s1"\n'))
    assert config.station.state_dir == tmp_path / "var"


def test_dataclasses_match_the_schema() -> None:
    """Every schema key has a field and vice versa: the schema stays the one source of truth."""
    schema = load_schema("config")["properties"]
    assert set(schema) == set(cfg.SECTION_TYPES)
    for section, section_type in cfg.SECTION_TYPES.items():
        assert {f.name for f in fields(section_type)} == set(schema[section]["properties"]), section


@pytest.mark.parametrize(
    "text, must_mention",
    [
        ('[station]\nid = "s1"\n[mqtt]\nport = "abc"\n', ["mqtt.port", "'abc'", "integer", "TCP port"]),
        ('[station]\nid = "s1"\n[mqtt]\nport = 70000\n', ["mqtt.port", "70000", "65535"]),
        ('[station]\nid = "s1"\n[mode]\nkind = "sometimes"\n', ["mode.kind", "'sometimes'", "continuous"]),
        ('[station]\nid = "s 1"\n', ["station.id", "'s 1'", "letters, digits"]),
        ('[station]\nid = "s1"\n[camera]\nsauce = "x"\n', ["camera", "sauce", "allowed", "source"]),
        ('[mqtt]\nhost = "h"\n', ["section [station] is missing", "station.id"]),
        ('[station]\nprefix = "p"\n', ["key station.id is missing", "Station id"]),
        ('[station]\nid = "s1"\nprefix = "isic/"\n', ["station.prefix", "'isic/'", "no leading or trailing '/'"]),
        ('[station]\nid = "s1"\nprefix = "a//b"\n', ["station.prefix", "'a//b'"]),
        ('[station]\nid = "s1"\n[stations]\nx = 1\n', ["unknown key stations", "top level", "station"]),
        ('[station]\nid = "s1"\n[mqtt]\npassword_env = "P"\n', ["mqtt.username"]),
        ('[station]\nid = "s1"\n[mqtt]\ncert_file = "c.pem"\ntls = true\n', ["mqtt.key_file"]),
        ("[station\n", ["not valid TOML", "line 1"]),
    ],
)
def test_errors_name_key_value_and_expectation(tmp_path: Path, text: str, must_mention: list) -> None:
    with pytest.raises(ConfigError) as info:
        cfg.load_config(write(tmp_path, text))
    message = str(info.value)
    for fragment in must_mention:
        assert fragment in message, (fragment, message)
    assert info.value.exit_code == 78


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_config(tmp_path / "nope.toml")


def test_password_from_environment_and_credentials(tmp_path: Path) -> None:
    base = '[station]\nid = "s1"\n[mqtt]\nusername = "u"\n'
    by_env = cfg.load_config(write(tmp_path, base + 'password_env = "ISIC_PW"\n'))
    assert cfg.mqtt_password(by_env.mqtt, {"ISIC_PW": "s3cret"}) == "s3cret"
    with pytest.raises(ConfigError, match="ISIC_PW"):
        cfg.mqtt_password(by_env.mqtt, {})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd\n", encoding="utf-8")
    by_cred = cfg.load_config(write(tmp_path, base + 'password_credential = "mqtt-password"\n'))
    assert cfg.mqtt_password(by_cred.mqtt, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-systemd"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        cfg.mqtt_password(by_cred.mqtt, {})
    # the password is not part of the config, so printing or logging the config cannot leak it
    assert "from-systemd" not in repr(by_cred) and "s3cret" not in repr(by_env)
    assert cfg.mqtt_password(cfg.load_config(write(tmp_path, base)).mqtt, {}) is None


def test_readme_reference_matches_the_schema() -> None:
    readme = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    assert cfg.replace_reference(readme) == readme, (
        "config/README.md is out of date: run .venv/bin/python -m isic_station.config --update config/README.md"
    )


def test_mqtt_settings_carry_the_link_options(tmp_path: Path) -> None:
    config = cfg.load_config(write(tmp_path, '[station]\nid = "s1"\n[mqtt]\nkeepalive_s = 20\nreconnect_max_s = 5\n'))
    settings = mqtt_settings(config)
    assert (settings.keepalive_s, settings.reconnect_max_s, settings.station_id) == (20, 5, "s1")
    with pytest.raises(ConfigError, match="reconnect_max_s"):
        cfg.load_config(write(tmp_path, '[station]\nid = "s1"\n[mqtt]\nreconnect_max_s = 0\n'))


def test_the_backend_enum_is_the_inference_registrys_kinds() -> None:
    enum = load_schema("config")["properties"]["model"]["properties"]["backend"]["enum"]
    assert enum == list(KINDS)
    assert set(enum) - {"auto"} == set(BACKENDS)

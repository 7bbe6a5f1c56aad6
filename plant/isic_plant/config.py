"""The plant service's configuration: one TOML file (`/etc/isic-plant/plant.toml` under systemd),
checked against `schemas/config.schema.json`; command-line options override it.

Every mistake stops the command with one line naming the key, the value and what is expected
(exit code 78: systemd does not restart a unit whose config is wrong).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import jsonschema
import tomllib

from isic_plant import spc
from isic_plant.errors import ConfigError
from isic_plant.schemas import load_plant_schema

DEFAULT_DSN = "host=127.0.0.1 dbname=isic_plant user=postgres"


@dataclass(frozen=True)
class PlantConfig:
    dsn: str = DEFAULT_DSN
    broker: Tuple[str, int] = ("127.0.0.1", 1883)
    prefix: str = "isic"
    client_id: str = "isic-plant-collector"
    share_group: str = "isic-plant"
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    keepalive_s: int = 30
    batch_max: int = 500
    batch_wait_s: float = 0.05
    spc_rules: Tuple[str, ...] = spc.DEFAULT_RULES
    spc_baseline: int = 20
    coverage_factor: float = 2.0
    web_host: str = "127.0.0.1"
    web_port: int = 8080


def parse_broker(text: str) -> Tuple[str, int]:
    """HOST:PORT -> (host, port); ConfigError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"broker {text!r} is not HOST:PORT (e.g. 127.0.0.1:1883)")
    return host, int(port)


def load_config(path: Optional[Path]) -> PlantConfig:
    """The config in `path` (defaults for what it leaves out); defaults alone when `path` is None."""
    if path is None:
        return PlantConfig()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (start from plant/plant.example.toml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    validator = jsonschema.Draft202012Validator(load_plant_schema("config"))
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "<top>"
        hint = e.schema.get("description", "") if isinstance(e.schema, dict) else ""
        raise ConfigError(f"{path}: {where}: {e.message}" + (f" ({hint})" if hint else ""))
    return _from_raw(raw, path)


def _from_raw(raw: Dict[str, Any], path: Path) -> PlantConfig:
    mqtt, col, s, web = raw.get("mqtt", {}), raw.get("collector", {}), raw.get("spc", {}), raw.get("web", {})
    rules = tuple(s.get("rules", spc.DEFAULT_RULES))
    unknown = [r for r in rules if r not in spc.RULES]
    if unknown:
        raise ConfigError(f"{path}: spc.rules: unknown rule {unknown[0]!r}; choose from {', '.join(spc.RULES)}")
    password = None
    if "password_env" in mqtt:
        password = os.environ.get(mqtt["password_env"])
        if password is None:
            raise ConfigError(f"{path}: mqtt.password_env names {mqtt['password_env']!r}, which is not set")
    if "password_credential" in mqtt:
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise ConfigError(f"{path}: mqtt.password_credential is set but $CREDENTIALS_DIRECTORY is not "
                              "(run under systemd with LoadCredential=, or use mqtt.password_env)")
        try:
            password = (Path(folder) / mqtt["password_credential"]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{path}: mqtt.password_credential {mqtt['password_credential']!r}: {exc}") from None
    defaults = PlantConfig()
    return PlantConfig(
        dsn=raw.get("database", {}).get("dsn", defaults.dsn),
        broker=parse_broker(mqtt["broker"]) if "broker" in mqtt else defaults.broker,
        prefix=mqtt.get("prefix", defaults.prefix),
        client_id=mqtt.get("client_id", defaults.client_id),
        share_group=mqtt.get("share_group", defaults.share_group),
        username=mqtt.get("username"),
        password=password,
        keepalive_s=mqtt.get("keepalive_s", defaults.keepalive_s),
        batch_max=col.get("batch_max", defaults.batch_max),
        batch_wait_s=col.get("batch_wait_ms", defaults.batch_wait_s * 1000) / 1000.0,
        spc_rules=rules,
        spc_baseline=s.get("baseline_points", defaults.spc_baseline),
        coverage_factor=raw.get("reference", {}).get("coverage_factor", defaults.coverage_factor),
        web_host=web.get("host", defaults.web_host),
        web_port=web.get("port", defaults.web_port),
    )

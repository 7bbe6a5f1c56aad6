"""The station's configuration: a TOML file, validated against `schemas/config.schema.json`.

The schema is the single source of truth: it validates the file, supplies every default, and
generates the reference table in `config/README.md` (`python -m isic_station.config --update
config/README.md`; a test fails when the two differ). Errors a technician must fix raise
`ConfigError` (exit 78, so systemd does not restart-loop) naming the key, the value and what is
expected. The broker password never sits in the file: it comes from an environment variable or
a systemd credential (`LoadCredential=` -> `$CREDENTIALS_DIRECTORY/<name>`) and is read only
when the MQTT link connects, so it is never part of a logged or printed config.
"""

import argparse
import copy
import math
import os
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import jsonschema

from isic_common.errors import ConfigError
from isic_station.schemas import load_schema, schema_property, validation_errors

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the board's Python 3.8
    import tomli as tomllib

SCHEMA_NAME = "config"
STATE_DIRECTORY_DEFAULT = "$STATE_DIRECTORY"


@dataclass(frozen=True)
class StationSection:
    """Who the station is and where it keeps its state."""

    id: str
    prefix: str
    log_level: str
    state_dir: Path
    lot: str


@dataclass(frozen=True)
class ModeSection:
    """How measurements are started: on a timer (continuous) or on command (triggered)."""

    kind: str
    interval_s: float


@dataclass(frozen=True)
class SpectrometerSection:
    """The OBP spectrometer on a serial port."""

    port: str
    baud: int
    timeout_s: float
    integration_us: int
    coadd: int
    temperature_offset_c: float


@dataclass(frozen=True)
class CameraSection:
    """The microscope camera; an empty `source` means signal-only measurements."""

    source: str
    width: int
    height: int
    fps: float
    um_per_px: float
    frames_per_measurement: int


@dataclass(frozen=True)
class QualitySection:
    """Thresholds of the frame quality gate and the spectrum signal check."""

    min_signal_fraction: float
    # None: the quality gate's own default (one source of truth: isic_station.acquisition.quality_gate.GateThresholds)
    min_focus: Optional[float] = None
    max_clipped_high: Optional[float] = None
    max_clipped_low: Optional[float] = None
    min_coverage: Optional[float] = None


@dataclass(frozen=True)
class ModelSection:
    """Which model manifest to load and on which backend."""

    manifest: Optional[Path]
    backend: str
    threads: int
    device_id: int


@dataclass(frozen=True)
class MqttSection:
    """Broker address, TLS and credentials (the password itself is read by `mqtt_password`)."""

    host: str
    port: int
    tls: bool
    ca_file: Optional[Path]
    cert_file: Optional[Path]
    key_file: Optional[Path]
    username: str
    password_env: str
    password_credential: str
    client_id: str
    keepalive_s: int
    reconnect_max_s: float
    discovery: bool
    discovery_prefix: str
    allow_plaintext_password: bool
    max_command_bytes: int


@dataclass(frozen=True)
class OutboxSection:
    """The durable SQLite outbox and its disk quota."""

    path: Path
    quota_mb: float


@dataclass(frozen=True)
class CalibrationSection:
    """Where dark/white references live and when they go stale."""

    dir: Path
    max_age_h: float


@dataclass(frozen=True)
class HealthSection:
    """How often the health document is published."""

    interval_s: float


@dataclass(frozen=True)
class PipelineSection:
    """Sizes of the pipeline's bounded queues."""

    queue_size: int


@dataclass(frozen=True)
class Config:
    """A validated configuration with every default filled in and every path resolved."""

    source: Optional[Path]
    station: StationSection
    mode: ModeSection
    spectrometer: SpectrometerSection
    camera: CameraSection
    quality: QualitySection
    model: ModelSection
    mqtt: MqttSection
    outbox: OutboxSection
    calibration: CalibrationSection
    health: HealthSection
    pipeline: PipelineSection

    @property
    def topic_base(self) -> str:
        """`<prefix>/<station id>`, the root of every topic of this station."""
        return f"{self.station.prefix}/{self.station.id}"


SECTION_TYPES = {f.name: f.type for f in fields(Config) if f.name != "source"}


def load_config(path: Union[str, Path]) -> Config:
    """Read, validate and resolve the TOML file at `path` (ConfigError naming what is wrong)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (give an existing TOML file with --config)") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    return config_from_document(document, base_dir=path.resolve().parent, source=path)


def config_from_document(document: Dict[str, Any], base_dir: Path, source: Optional[Path] = None) -> Config:
    """Validate a parsed config document and build the `Config` (paths relative to `base_dir`)."""
    where = f"config file {source}" if source else "config"
    problems = validation_errors(document, SCHEMA_NAME) + _non_finite(document)
    if problems:
        raise ConfigError(f"{where}: " + "; ".join(_explain(p) for p in problems))
    full = with_defaults(document)
    station = dict(full["station"])
    station["state_dir"] = _state_dir(station["state_dir"], base_dir)
    state_dir = station["state_dir"]
    sections: Dict[str, Any] = {"station": StationSection(**station)}
    model = dict(full["model"])
    model["manifest"] = _path(model["manifest"], base_dir)
    sections["model"] = ModelSection(**model)
    mqtt = dict(full["mqtt"])
    for key in ("ca_file", "cert_file", "key_file"):
        mqtt[key] = _path(mqtt[key], base_dir)
    sections["mqtt"] = MqttSection(**mqtt)
    outbox = dict(full["outbox"])
    outbox["path"] = _path(outbox["path"], state_dir)
    sections["outbox"] = OutboxSection(**outbox)
    calibration = dict(full["calibration"])
    calibration["dir"] = _path(calibration["dir"], state_dir)
    sections["calibration"] = CalibrationSection(**calibration)
    for name in ("mode", "spectrometer", "camera", "quality", "health", "pipeline"):
        sections[name] = SECTION_TYPES[name](**full[name])
    config = Config(source=source, **sections)
    _check_consistency(config, where)
    return config


def with_defaults(document: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of `document` with every section and key the schema gives a default for."""
    full = copy.deepcopy(document)
    for section, spec in load_schema(SCHEMA_NAME)["properties"].items():
        values = full.setdefault(section, {})
        for key, prop in spec["properties"].items():
            if "default" in prop:
                values.setdefault(key, prop["default"])
    return full


def check_key(key: str, value: Any) -> None:
    """ConfigError naming `key` ('section.name') unless `value` meets the schema's rule for it.

    For values that reach a part without passing `load_config` (the link settings a bench or a test
    builds), so the rule is still the schema's and the error names the config key.
    """
    prop = _schema_property(key.split("."))
    if prop is None:
        raise KeyError(f"the config schema has no key {key}")
    validator = jsonschema.validators.validator_for(load_schema(SCHEMA_NAME))(prop)
    problems = [e.message for e in validator.iter_errors(value)]
    if problems:
        expected = f" (expected: {prop['description']})" if prop.get("description") else ""
        raise ConfigError(f"key {key} = {value!r} is invalid: {'; '.join(problems)}{expected}")


def mqtt_password(mqtt: MqttSection, environ: Optional[Dict[str, str]] = None) -> Optional[str]:
    """The broker password from the environment or a systemd credential; None when none is configured.

    Read at connect time only, never stored in the Config and never logged.
    """
    environ = os.environ if environ is None else environ
    if mqtt.password_env:
        if mqtt.password_env not in environ:
            raise ConfigError(f"mqtt.password_env = '{mqtt.password_env}': that environment variable is not set "
                              f"(set it, or use mqtt.password_credential with systemd's LoadCredential=)")
        return environ[mqtt.password_env]
    if mqtt.password_credential:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(f"mqtt.password_credential = '{mqtt.password_credential}' but $CREDENTIALS_DIRECTORY is "
                              f"not set (run under systemd with LoadCredential={mqtt.password_credential}:FILE)")
        cred = Path(directory) / mqtt.password_credential
        try:
            return cred.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"mqtt.password_credential = '{mqtt.password_credential}': cannot read {cred}: "
                              f"{exc.strerror}") from None
    return None


def _non_finite(document: Dict[str, Any]) -> List[str]:
    """'key: message' for each nan/inf value: TOML allows them and the schema's bounds let nan through."""
    return [f"{section}.{key}: {value} is not a finite number" for section, table in document.items()
            if isinstance(table, dict) for key, value in table.items()
            if isinstance(value, float) and not math.isfinite(value)]


def _explain(problem: str) -> str:
    """Turn a 'path: message' schema violation into one that names the key and says what is expected
    (the key's description from the schema, or the keys allowed where an unknown one was found)."""
    path, _, message = problem.partition(": ")
    prefix = "" if path == "<top>" else path + "."
    missing = re.match(r"'([^']+)' is a required property", message)
    if missing:
        key = prefix + missing.group(1)
        prop = _schema_property(key.split(".")) or {}
        if "properties" in prop:
            needed = ", ".join(f"{key}.{k}" for k in prop.get("required", [])) or "its keys"
            return f"section [{key}] is missing (it must hold at least {needed})"
        return f"key {key} is missing (expected: {prop.get('description', 'a value')})"
    unknown = re.match(r"Additional properties are not allowed \((.+) (?:was|were) unexpected\)", message)
    if unknown:
        names = ", ".join(prefix + n for n in re.findall(r"'([^']+)'", unknown.group(1)))
        node = _schema_property(path.split(".")) if path != "<top>" else load_schema(SCHEMA_NAME)
        allowed = ", ".join(sorted((node or {}).get("properties", {})))
        where = f"[{path}]" if path != "<top>" else "the top level"
        return f"unknown key {names} (allowed in {where}: {allowed})"
    prop = _schema_property(path.split(".")) if path != "<top>" else None
    if prop and prop.get("description"):
        return f"key {path}: {message} (expected: {prop['description']})"
    return f"key {path}: {message}"


def _schema_property(path: List[str]) -> Optional[Dict[str, Any]]:
    return schema_property(SCHEMA_NAME, path)


def _state_dir(value: str, base_dir: Path) -> Path:
    if value == STATE_DIRECTORY_DEFAULT:
        from_systemd = os.environ.get("STATE_DIRECTORY", "")
        # systemd passes one path per StateDirectory= entry, colon-separated; the first is ours.
        return Path(from_systemd.split(":")[0]) if from_systemd else base_dir / "state"
    return _path(value, base_dir) or base_dir


def _path(value: str, base: Path) -> Optional[Path]:
    if not value:
        return None
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else base / path


def _check_consistency(config: Config, where: str) -> None:
    """Rules that span keys, which the schema cannot say."""
    mqtt = config.mqtt
    if mqtt.password_env and mqtt.password_credential:
        raise ConfigError(f"{where}: keys mqtt.password_env ('{mqtt.password_env}') and mqtt.password_credential "
                          f"('{mqtt.password_credential}') are both set (expected: one source for the password)")
    problem = link_consistency_error(mqtt.tls, mqtt.ca_file, mqtt.cert_file, mqtt.key_file, mqtt.username,
                                     bool(mqtt.password_env or mqtt.password_credential))
    if problem:
        raise ConfigError(f"{where}: {problem}")


def link_consistency_error(tls: bool, ca_file: Any, cert_file: Any, key_file: Any, username: Optional[str],
                           password_configured: bool) -> Optional[str]:
    """The first broken rule between the [mqtt] TLS and login keys, or None: stated once, for
    `load_config` and for the link settings a bench or a test builds without it."""
    if password_configured and not username:
        return ("a broker password is configured (mqtt.password_env, mqtt.password_credential) but key "
                "mqtt.username is empty (expected: the user name that goes with the password)")
    if bool(cert_file) != bool(key_file):
        return (f"keys mqtt.cert_file and mqtt.key_file must be given together "
                f"(cert_file={cert_file}, key_file={key_file})")
    if (ca_file or cert_file) and not tls:
        return "TLS files are set but key mqtt.tls is false (expected: tls = true)"
    return None


def reference_markdown() -> str:
    """The config reference table (one row per key), generated from the schema."""
    schema = load_schema(SCHEMA_NAME)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for section, spec in schema["properties"].items():
        for key, prop in spec["properties"].items():
            kind = " \\| ".join(f"`{v}`" for v in prop["enum"]) if "enum" in prop else prop.get("type", "")
            required = key in spec.get("required", [])
            if required:
                default = "required"
            elif "default" in prop:
                default = f"`{_toml_value(prop['default'])}`"
            else:
                default = "see meaning"
            lines.append(f"| `{section}.{key}` | {kind} | {default} | {prop.get('description', '')} |")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


REFERENCE_BEGIN = "<!-- config reference: generated by `python -m isic_station.config --update config/README.md` -->"
REFERENCE_END = "<!-- end of config reference -->"


def replace_reference(text: str) -> str:
    """`text` (a README) with the part between the reference markers regenerated from the schema."""
    start, end = text.find(REFERENCE_BEGIN), text.find(REFERENCE_END)
    if start < 0 or end < start:
        raise ConfigError(f"the README has no '{REFERENCE_BEGIN}' ... '{REFERENCE_END}' block to fill")
    return text[: start + len(REFERENCE_BEGIN)] + "\n" + reference_markdown() + text[end:]


def main(argv: Optional[List[str]] = None) -> int:
    """Print the config reference table, or rewrite it in place inside a README (`--update FILE`)."""
    parser = argparse.ArgumentParser(prog="python -m isic_station.config", description=main.__doc__)
    parser.add_argument("--update", metavar="README", help="rewrite the generated block of this file")
    args = parser.parse_args(argv)
    if args.update:
        target = Path(args.update)
        target.write_text(replace_reference(target.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`isic-station broker-acl`: the Mosquitto ACL and password file that give each role exactly its part.

Anyone who may publish on a station's command topics can re-calibrate it or declare a lot, so a
plant's broker must not let every client do everything. Four roles per station:

- station (user `isic-<station>`): publishes only its own status, result, state, health, alarm,
  command responses and Home Assistant discovery; reads its commands and `homeassistant/status`;
- viewer, a dashboard (`isic-viewer`): reads the station's topics and discovery, publishes nothing;
- operator (`isic-operator`): as viewer, and may send `measure`, `set_lot`, `status`;
- technician (`isic-technician`): as viewer, and may send `calibrate`, `reload_model`, `status`.

The command writes a directory holding `acl` (Mosquitto's `acl_file` format), `passwd` (its
`password_file` format), `mosquitto.conf` (the lines that turn both on and anonymous access off, to
`include_dir` or append) and `secrets/<user>`, one random password per user (mode 0600). Run again
with more stations, or after a change, it keeps the existing secrets (`--new-passwords` replaces them).

The password file is written here rather than with `mosquitto_passwd`, which is not on a station
or an installer's machine: Mosquitto 2's `$7$` format is PBKDF2-HMAC-SHA512 (the iteration count is
in each line, so a higher one than its default of 101 is read as written), salt and hash in base64.
The end-to-end tests start a real Mosquitto with these files.
"""

import argparse
import base64
import hashlib
import os
import secrets
from pathlib import Path
from typing import Dict, List, Sequence

from isic_common.errors import ConfigError
from isic_station.messaging.ha_discovery import BIRTH_TOPIC_SUFFIX, DEFAULT_DISCOVERY_PREFIX, node_id

ROLES = ("station", "viewer", "operator", "technician")
ROLE_COMMANDS = {"operator": ("measure", "set_lot", "status"), "technician": ("calibrate", "reload_model", "status")}
STATION_PUBLISHES = ("status", "result", "state", "health", "alarm", "cmd/+/response")
PBKDF2_ITERATIONS = 20_000
SALT_BYTES = 12  # what mosquitto_passwd uses


def station_user(station: str) -> str:
    """The broker user of a station: its default MQTT client id too."""
    return f"isic-{station}"


def acl_text(prefix: str, stations: Sequence[str], role_users: Dict[str, str],
             ha_prefix: str = DEFAULT_DISCOVERY_PREFIX) -> str:
    """Mosquitto ACL lines: each station's user, then each role user, for every station."""
    lines = [f"# Mosquitto ACL written by `isic-station broker-acl` for {', '.join(stations)} (prefix {prefix}).",
             "# Each user may do only what its role needs; everything else is denied.", ""]
    for station in stations:
        base = f"{prefix}/{station}"
        lines += [f"# station {station}", f"user {station_user(station)}"]
        lines += [f"topic write {base}/{suffix}" for suffix in STATION_PUBLISHES]
        lines += [f"topic read {base}/cmd/+", f"topic write {ha_prefix}/+/{node_id(station)}/#",
                  f"topic read {ha_prefix}/{BIRTH_TOPIC_SUFFIX}", ""]
    for role in ("viewer", "operator", "technician"):
        lines += [f"# {role}", f"user {role_users[role]}"]
        for station in stations:
            base = f"{prefix}/{station}"
            lines += [f"topic read {base}/#", f"topic read {ha_prefix}/+/{node_id(station)}/#"]
            lines += [f"topic write {base}/cmd/{name}" for name in ROLE_COMMANDS.get(role, ())]
        lines.append("")
    return "\n".join(lines)


def password_line(user: str, password: str, iterations: int = PBKDF2_ITERATIONS, salt: bytes = b"") -> str:
    """One `password_file` line in Mosquitto 2's `$7$` (PBKDF2-SHA512) format."""
    salt = salt or secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"{user}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def conf_text(folder: Path) -> str:
    """The broker settings that use the files (Mosquitto 2 reads them for every listener by default)."""
    return (f"# written by `isic-station broker-acl`: no anonymous clients, users from passwd, rights from acl\n"
            f"allow_anonymous false\npassword_file {folder / 'passwd'}\nacl_file {folder / 'acl'}\n")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def write_broker_files(folder: Path, prefix: str, stations: Sequence[str], role_users: Dict[str, str],
                       ha_prefix: str = DEFAULT_DISCOVERY_PREFIX, new_passwords: bool = False) -> Dict[str, str]:
    """Write acl, passwd, mosquitto.conf and secrets/<user> into `folder`; returns {user: password}."""
    for station in stations:
        if not station or any(c in station for c in "#+/ "):
            raise ConfigError(f"station id {station!r} is invalid: expected a name without '/', '+', '#' or spaces")
    users = [station_user(s) for s in stations] + [role_users[r] for r in ("viewer", "operator", "technician")]
    if len(set(users)) != len(users):
        raise ConfigError(f"broker users must differ: {users}")
    secrets_dir = folder / "secrets"
    try:
        secrets_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(secrets_dir, 0o700)
        passwords: Dict[str, str] = {}
        for user in users:
            path = secrets_dir / user
            if path.exists() and not new_passwords:
                passwords[user] = path.read_text(encoding="utf-8").strip()
            else:
                passwords[user] = secrets.token_urlsafe(24)
                _write_private(path, passwords[user] + "\n")
        (folder / "acl").write_text(acl_text(prefix, stations, role_users, ha_prefix), encoding="utf-8")
        _write_private(folder / "passwd", "".join(password_line(u, p) + "\n" for u, p in passwords.items()))
        (folder / "mosquitto.conf").write_text(conf_text(folder.resolve()), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the broker files into {folder}: {exc}") from exc
    return passwords


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the broker-acl sub-command."""
    parser = subparsers.add_parser(
        "broker-acl", help="write a Mosquitto ACL and password file for the station, viewer, operator and "
                           "technician roles",
        description="Write acl, passwd, mosquitto.conf and secrets/<user> into --out for the given station ids: "
                    "the station may publish only its own topics and read its commands; the viewer reads; the "
                    "operator may also send measure, set_lot and status; the technician calibrate, reload_model "
                    "and status. Existing secrets are kept unless --new-passwords.")
    parser.add_argument("--station", required=True, action="append", metavar="ID",
                        help="station id (station.id in its config); repeat for several stations on one broker")
    parser.add_argument("--prefix", default="isic", help="station.prefix of the stations (default isic)")
    parser.add_argument("--ha-prefix", default=DEFAULT_DISCOVERY_PREFIX,
                        help=f"Home Assistant discovery prefix (default {DEFAULT_DISCOVERY_PREFIX})")
    for role in ("viewer", "operator", "technician"):
        parser.add_argument(f"--{role}-user", default=f"isic-{role}", metavar="NAME",
                            help=f"broker user of the {role} role (default isic-{role})")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write the files into")
    parser.add_argument("--new-passwords", action="store_true", help="replace the existing secrets")
    parser.set_defaults(handler=_broker_acl)


def _broker_acl(args: argparse.Namespace) -> int:
    role_users = {role: getattr(args, f"{role}_user") for role in ("viewer", "operator", "technician")}
    write_broker_files(args.out, args.prefix, args.station, role_users, args.ha_prefix, args.new_passwords)
    lines: List[str] = [f"broker files written to {args.out}:",
                        "  mosquitto.conf  include it in the broker's config (or: include_dir), restart Mosquitto",
                        "  acl, passwd     what it refers to",
                        "  secrets/        one password per user (mode 0600): give each role's to its people"]
    for station in args.station:
        user = station_user(station)
        lines.append(f"  station {station}: mqtt.username = \"{user}\", mqtt.password_credential = \"mqtt-password\", "
                     f"and copy secrets/{user} to /etc/isic-station/mqtt-password (mode 0600)")
    print("\n".join(lines))
    return 0

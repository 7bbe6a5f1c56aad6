"""Fixtures of the messaging tests: links on the real Mosquitto, a broker that keeps sessions."""

import os
import pwd
from pathlib import Path
from typing import Iterator

import pytest

from isic_station.messaging.mqtt_link import MqttSettings

from .mqtt_helpers import publish_once, unique


@pytest.fixture
def names() -> dict:
    """Unique topic prefix, station id and discovery prefix, so tests sharing the broker never meet."""
    prefix, station = unique("t-"), unique("st")
    return {"prefix": prefix, "station": station, "ha_prefix": unique("ha-"), "base": f"{prefix}/{station}"}


def fast_settings(host: str, port: int, names: dict, **overrides) -> MqttSettings:
    """Settings that reconnect and report quickly, so tests stay within seconds."""
    values = dict(host=host, port=port, prefix=names["prefix"], station_id=names["station"],
                  ha_prefix=names["ha_prefix"], reconnect_min_s=0.1, reconnect_max_s=0.5,
                  health_interval_s=60.0, keepalive_s=10)
    values.update(overrides)
    return MqttSettings(**values)


@pytest.fixture
def clear_retained(mqtt_broker) -> Iterator[list]:
    """Topics appended to this list get an empty retained message at the end (keeps the shared broker clean)."""
    topics: list = []
    yield topics
    for topic in topics:
        publish_once(*mqtt_broker, topic, b"", retain=True)


def reconfigure(broker, lines: str) -> None:
    """Restart a private broker with more configuration lines. `user` keeps it running as the test's own
    user: as root, Mosquitto would otherwise drop to the `mosquitto` user, who cannot read the test's files."""
    broker.stop()
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nuser {pwd.getpwuid(os.getuid()).pw_name}\n{lines}", encoding="utf-8"
    )
    broker.start()


@pytest.fixture
def persistent_broker(private_broker, tmp_path: Path):
    """A private Mosquitto that keeps sessions and queued messages across a restart (persistence on),
    so a subscriber misses nothing while the broker is down."""
    store = tmp_path / "mosquitto-store"
    store.mkdir()
    reconfigure(private_broker, f"allow_anonymous true\npersistence true\npersistence_location {store}/\n")
    yield private_broker
    log = private_broker.log.read_text(encoding="utf-8", errors="replace")
    assert "Error" not in log, f"the test broker reported an error:\n{log}"

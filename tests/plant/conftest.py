"""Fixtures of the plant service's tests: a scratch PostgreSQL database (made and dropped here on the
machine's server, 127.0.0.1:5432), collectors run in a thread against a real Mosquitto, an MQTT publisher."""

import json
import threading
import time
import uuid
from typing import Any, Callable, Iterator, List, Tuple

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from isic_plant import db
from isic_plant.collector import Collector, CollectorSettings


@pytest.fixture
def plant_db() -> Iterator[str]:
    """A migrated scratch database's DSN, dropped after the test."""
    with db.scratch_database(db.SERVER_DSN, "isic_plant_test") as dsn:
        db.migrate(dsn)
        yield dsn


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own, so tests on the shared broker never see each other."""
    return f"isic-test-{uuid.uuid4().hex[:8]}"


class RunningCollector:
    """A Collector on a thread of the test."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.collector = Collector(settings)
        self.errors: List[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.collector.connected.wait(10):
            pytest.fail("the collector did not connect to the broker within 10 s")
        time.sleep(0.2)  # its SUBSCRIBE is on the wire

    def _run(self) -> None:
        try:
            self.collector.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        self.collector.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the collector did not stop"
        assert not self.errors, f"the collector failed: {self.errors!r}"


@pytest.fixture
def start_collector(mqtt_broker: Tuple[str, int], plant_db: str,
                    prefix: str) -> Iterator[Callable[..., RunningCollector]]:
    started: List[RunningCollector] = []

    def start(**overrides: Any) -> RunningCollector:
        host, port = overrides.pop("address", mqtt_broker)
        settings = CollectorSettings(host=host, port=port, dsn=plant_db, prefix=prefix,
                                     client_id=overrides.pop("client_id", f"{prefix}-c{len(started)}"),
                                     share_group=overrides.pop("share_group", prefix),
                                     session_expiry_s=overrides.pop("session_expiry_s", 60), **overrides)
        running = RunningCollector(settings)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


class Publisher:
    """A QoS 1 publisher that waits for every PUBACK."""

    def __init__(self, host: str, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: Any, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mqtt_broker: Tuple[str, int]) -> Iterator[Publisher]:
    pub = Publisher(*mqtt_broker)
    yield pub
    pub.close()


def wait_rows(dsn: str, sql: str, expected: int, timeout: float = 15.0, params: Tuple = ()) -> int:
    """Poll `sql` (a count) until it reaches `expected`; the last count."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as conn:
            count = conn.execute(sql, params).fetchone()[0]
        if count >= expected:
            return count
        time.sleep(0.1)
    return count


def query(dsn: str, sql: str, params: Tuple = ()) -> List[Tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


"""Helpers of the messaging tests: a recording MQTT subscriber, sample documents, unique names."""

import json
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from isic_station.messaging.results import build_result

FIBRES = ("cotton", "polyester")


def unique(prefix: str) -> str:
    """A name no other test (or helper sharing the broker) uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def sample_result(station: str, sequence: int, composition: Optional[Dict[str, float]] = None,
                  spec: Optional[Dict[str, Any]] = None, lot_id: Optional[str] = None) -> Dict[str, Any]:
    """A result document as the station builds it."""
    composition = composition or {"cotton": 0.62, "polyester": 0.38}
    return build_result(
        station=station, sequence=sequence, composition=composition, blend="cotton/polyester",
        confidence=0.93, uncertainty={f: 0.01 for f in composition}, flags=["low_signal"],
        model={"name": "isicnet", "version": "1.0.0", "sha256": "ab" * 32}, backend="onnxruntime",
        timings_ms={"acquire": 400.0, "preprocess": 12.5, "infer": 30.25, "total": 442.75},
        sample_id=f"S-{sequence}", lot_id=lot_id, spec=spec,
    )


def health_part() -> Dict[str, Any]:
    """What the station's health source returns."""
    return {
        "uptime_s": 12.5,
        "results": {"total": 3, "per_minute": 6.0},
        "inference_ms": {"p50": 31.0, "p99": 45.0},
        "devices": {"spectrometer": {"state": "ok", "reconnects": 0},
                    "camera": {"state": "degraded", "reconnects": 2, "detail": "frame timeouts"}},
        "calibration": {"dark_age_s": 60.0, "white_age_s": None},
    }


class Recorder:
    """A real MQTT subscriber that keeps every message it receives, with bounded waits."""

    def __init__(self, host: str, port: int, topics: List[str], client_id: Optional[str] = None,
                 persistent: bool = False) -> None:
        self.messages: List[Tuple[str, bytes, bool, int]] = []  # topic, payload, retain, qos
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or unique("rec-"), clean_session=not persistent)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client, userdata, message) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain), message.qos))
            self._cond.notify_all()

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        assert self._subscribed.wait(timeout), "subscriber did not get its SUBACK"
        self._subscribed.clear()

    def wait_for(self, predicate: Callable[[List[Tuple[str, bytes, bool, int]]], bool], timeout: float = 10.0,
                 what: str = "messages") -> List[Tuple[str, bytes, bool, int]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out after {timeout} s waiting for {what}; got {self.topics()}"
                self._cond.wait(left)
            return list(self.messages)

    def payloads(self, topic: str) -> List[Any]:
        """JSON payloads received on `topic`, in arrival order (empty payloads as None)."""
        with self._cond:
            return [json.loads(m[1]) if m[1] else None for m in self.messages if m[0] == topic]

    def count(self, topic: str) -> int:
        """How many messages arrived on `topic`."""
        with self._cond:
            return sum(1 for m in self.messages if m[0] == topic)

    def wait_count(self, topic: str, n: int, timeout: float = 10.0) -> List[Any]:
        """Wait until `n` messages arrived on `topic`; their JSON payloads."""
        self.wait_for(lambda msgs: sum(1 for m in msgs if m[0] == topic) >= n, timeout, f"{n} on {topic}")
        return self.payloads(topic)

    def topics(self) -> List[str]:
        with self._cond:
            return [m[0] for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_once(host: str, port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish one message at QoS 1 from a throw-away client and wait (bounded) for its PUBACK."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=unique("pub-"))
    client.connect(host, port, keepalive=10)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5.0)
        assert info.is_published(), f"no PUBACK for {topic} within 5 s"
    finally:
        client.disconnect()
        client.loop_stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` (a state another thread changes) until true or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)

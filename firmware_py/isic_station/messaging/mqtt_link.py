"""The station's MQTT link: one thread owns the paho client; everything else hands it work.

paho's client is not fully thread-safe and `publish()` drops nothing but keeps QoS 1 messages only
in memory, so:
- one owner thread runs the network loop (paho's external-loop API: `loop_read`/`loop_write`/
  `loop_misc` under our own `select`, which also watches a wake-up socket so work handed over by
  other threads is sent at once, without polling);
- results and alarms go through the durable `Outbox`: sent oldest first at QoS 1, at most
  `max_inflight` at a time, deleted only on their PUBACK (`on_publish`, VERSION2 callbacks);
- every connection attempt uses a fresh client (`connect_async` stores the address, `reconnect`
  opens the socket) with exponential backoff, so nothing from a lost connection lingers in paho's
  memory: the outbox replays it, marked `replayed`. A broker that is down never blocks the caller;
- callbacks only record what happened; the loop acts on it (SQLite writes, publishes).

Topics, under `<prefix>/<station>/`: `status` (retained `{"state": "online"|"offline"}`, last will
offline, online again on every connect), `result` (QoS 1, from the outbox), `state` (retained
latest result), `health` (retained, every `health_interval_s`), `alarm` (QoS 1, from the outbox),
`cmd/<name>` and `cmd/<name>/response`. Home Assistant discovery is re-published on every connect
and when `homeassistant/status` turns `online`.

The link speaks MQTT 5 so that it can tell a retained command from a live one: MQTT 3.1.1 clears
the retain flag on every message delivered live, so a command published with retain while the
station is connected would look live and run (and again after every reconnect). The command
subscription sets retain-as-published, so every retained command - live or replayed on subscribe -
arrives flagged and the `CommandRouter` refuses it. CONNECT also announces a Maximum Packet Size,
so the broker never hands the station a message of many megabytes (it drops it instead, MQTT 5
3.1.2.25); payloads between the router's command limit and that size are answered with an error.
"""

import collections
import contextlib
import ipaddress
import logging
import queue
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from isic_common.backoff import Backoff
from isic_common.errors import ConfigError
from isic_station import __version__
from isic_station.config import check_key, link_consistency_error
from isic_station.messaging.commands import CommandRouter, response
from isic_station.messaging.ha_discovery import (
    BIRTH_TOPIC_SUFFIX,
    DISCOVERY_DELIVERY,
    discovery_messages,
    removal_messages,
)
from isic_station.messaging.outbox import Outbox, encode_payload
from isic_station.messaging.results import build_health
from isic_station.schemas import delivery, schema_default

log = logging.getLogger(__name__)

HealthSource = Callable[[], Dict[str, Any]]
DeliveryCallback = Callable[[int], None]

# The largest packet the broker may send the station (MQTT 5 Maximum Packet Size): commands are
# small, so anything near this is an attack or a mistake and never reaches the station's memory.
MAX_PACKET_BYTES = 1024 * 1024


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MqttSettings:
    """Everything the link needs from the configuration (the station's `[mqtt]` config maps onto it).

    `password` is never logged or shown in repr. `tls` turns TLS on: the broker is checked against
    `ca_file` (empty/None: the system's CAs); `cert_file` + `key_file` add a client certificate.
    `qos` is the QoS of results and alarms. Empty strings count as unset. A password over a link
    without TLS to a broker off this machine is refused unless `allow_plaintext_password`.
    """

    host: str = schema_default("mqtt.host")
    port: int = schema_default("mqtt.port")
    prefix: str = schema_default("station.prefix")
    station_id: str = "station-1"
    client_id: Optional[str] = None
    keepalive_s: int = schema_default("mqtt.keepalive_s")
    qos: int = delivery("result")["qos"]
    tls: bool = schema_default("mqtt.tls")
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    max_inflight: int = 10
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = schema_default("mqtt.reconnect_max_s")
    health_interval_s: float = schema_default("health.interval_s")
    discovery: bool = schema_default("mqtt.discovery")
    ha_prefix: str = schema_default("mqtt.discovery_prefix")
    allow_plaintext_password: bool = schema_default("mqtt.allow_plaintext_password")

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, expected: str) -> ConfigError:
            return ConfigError(f"mqtt.{key} = {value!r} is invalid: expected {expected}")

        # The schema's rules for the keys that shape the connection and the topics (settings built
        # without load_config, by a bench or a test, meet them too).
        for key, value in (("mqtt.host", self.host), ("mqtt.port", self.port), ("station.prefix", self.prefix),
                           ("station.id", self.station_id), ("mqtt.keepalive_s", self.keepalive_s)):
            check_key(key, value)
        if self.qos not in (1, 2):
            raise bad("qos", self.qos, "1 or 2 (results need an acknowledgement)")
        if self.max_inflight < 1:
            raise bad("max_inflight", self.max_inflight, "at least 1")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise bad("reconnect_min_s", self.reconnect_min_s, f"> 0 and <= reconnect_max_s ({self.reconnect_max_s})")
        if self.health_interval_s <= 0:
            raise bad("health_interval_s", self.health_interval_s, "a positive number of seconds")
        problem = link_consistency_error(self.tls, self.ca_file, self.cert_file, self.key_file, self.username,
                                         self.password is not None)
        if problem:
            raise ConfigError(problem)
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise bad(key, path, "an existing readable file")
        if self.password and not self.tls and not is_loopback(self.host) and not self.allow_plaintext_password:
            raise ConfigError(
                f"mqtt: a password would go in plain text to the broker {self.host}:{self.port} (mqtt.tls = false): "
                "anyone on that network could read it. Set mqtt.tls = true (port 8883 is usual), or, on a network "
                "you trust, mqtt.allow_plaintext_password = true"
            )


class StationTopics:
    """The station's topic names under `<prefix>/<station>`."""

    def __init__(self, prefix: str, station: str) -> None:
        self.base = f"{prefix}/{station}"
        self.status = f"{self.base}/status"
        self.result = f"{self.base}/result"
        self.state = f"{self.base}/state"
        self.health = f"{self.base}/health"
        self.alarm = f"{self.base}/alarm"
        self.lot = f"{self.base}/lot"
        self.command_filter = f"{self.base}/cmd/+"
        self.response_filter = f"{self.base}/cmd/+/response"

    def command(self, name: str) -> str:
        """Where command `name` is requested."""
        return f"{self.base}/cmd/{name}"

    def response(self, name: str) -> str:
        """Where command `name` is answered."""
        return f"{self.base}/cmd/{name}/response"

    def command_name(self, topic: str) -> Optional[str]:
        """The command name of a request topic, or None for any other topic."""
        head = f"{self.base}/cmd/"
        if topic.startswith(head) and "/" not in topic[len(head):]:
            return topic[len(head):]
        return None


def status_payload(station: str, state: str) -> bytes:
    """The availability document (schema `status`)."""
    return encode_payload({"state": state, "station": station})


class MqttLink:
    """The MQTT side of the station: owns the paho client in one thread (see the module docstring).

    Thread-safe public methods: `publish_result`, `publish_alarm`, `publish`, `set_ha_fibres`,
    `stats`, `connected`, `wait_connected`, `stop`.
    """

    def __init__(
        self,
        settings: MqttSettings,
        outbox: Outbox,
        health_source: Optional[HealthSource] = None,
        commands: Optional[CommandRouter] = None,
        ha_fibres: Sequence[str] = (),
        sw_version: str = __version__,
        on_delivered: Optional[DeliveryCallback] = None,
    ) -> None:
        self.settings = settings
        self._on_delivered = on_delivered
        self.topics = StationTopics(settings.prefix, settings.station_id)
        self._outbox = outbox
        self._health_source = health_source
        self._commands = commands
        self._sw_version = sw_version
        self._ha_fibres: List[str] = list(ha_fibres)
        self._ha_removed: List[str] = []
        self._client_id = settings.client_id or f"isic-{settings.station_id}"
        self._work: queue.Queue = queue.Queue(maxsize=1000)  # (topic, payload, qos, retain) or callables
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._latest_state: Optional[bytes] = None
        self._state_due = False
        self._client: Optional[paho.Client] = None
        self._connected = threading.Event()  # CONNACK accepted: the outbox may be sent
        self._ready = threading.Event()  # and the command subscription acknowledged (SUBACK)
        self._subscribe_mid: Optional[int] = None
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._inflight: Set[int] = set()  # mids of outbox entries handed to paho
        # What callbacks saw, acted on by the loop (callbacks never touch SQLite or block).
        self._events: Deque[Tuple[str, Any]] = collections.deque()
        self._connects = 0
        self._acked = 0
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._next_attempt = 0.0
        self._next_health = 0.0
        self._refused_logged = False
        self._stop_timeout = 5.0

    # ----- public, any thread -------------------------------------------------------------------

    def start(self) -> None:
        """Check the TLS/credential settings (ConfigError) and start the owner thread; never waits
        for the broker."""
        self._new_client()  # fails here, in the caller, on unreadable TLS files
        if self._commands is not None:  # before the first connection: a retained command is answered too
            self._commands.start(self._respond)
        self._thread = threading.Thread(target=self._run, name="isic-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what the outbox can send within `timeout`, publish `offline`, disconnect, end the thread."""
        if self._commands is not None:
            self._commands.stop(timeout=min(timeout, 2.0))
        if self._thread is not None:
            self._stop_timeout = timeout
            self._stopping.set()
            self._wake()
            self._thread.join(timeout + 2.0)
            if self._thread.is_alive():
                log.warning("MQTT owner thread did not end within %.1f s", timeout + 2.0)
            self._thread = None
        self._wake_r.close()
        self._wake_w.close()

    def publish_result(self, doc: Dict[str, Any]) -> int:
        """Store a result in the outbox (durable from here on), publish it when connected, and make
        it the retained latest state. Returns the outbox row id."""
        payload = encode_payload(doc)
        row = self._outbox.add(self.topics.result, payload, qos=self.settings.qos)
        with self._lock:
            self._latest_state = payload
            self._state_due = True
        self._wake()
        return row

    def publish_alarm(self, doc: Dict[str, Any], also_now: bool = False) -> int:
        """Store an alarm in the outbox (the quota never drops it) and publish it when connected.
        `also_now` sends a copy at once too (same message_id), for an alarm about the outbox's own disk,
        whose stored copy may wait in memory. Returns the outbox row id."""
        row = self._outbox.add(self.topics.alarm, doc, qos=self.settings.qos, droppable=False)
        if also_now:
            self.publish(self.topics.alarm, doc, qos=self.settings.qos)
        self._wake()
        return row

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> bool:
        """Publish a non-durable message (sent if connected, otherwise dropped). False when the hand-over
        queue is full."""
        try:
            self._work.put_nowait((topic, encode_payload(payload), qos, retain))
        except queue.Full:
            log.warning("MQTT hand-over queue full: dropped a message for %s", topic)
            return False
        self._wake()
        return True

    def set_ha_fibres(self, fibres: Sequence[str]) -> None:
        """A new model measures `fibres`: publish their discovery and remove the entities of the others."""
        with self._lock:
            self._ha_removed = [f for f in self._ha_fibres if f not in fibres]
            self._ha_fibres = list(fibres)
        self._post(self._publish_discovery)

    @property
    def connected(self) -> bool:
        """True while a CONNACK-accepted connection is up."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the link to be connected and subscribed to its commands."""
        return self._ready.wait(timeout)

    def stats(self) -> Dict[str, Any]:
        """The health document's `mqtt` object."""
        return {
            "connected": self.connected,
            "reconnects": max(0, self._connects - 1),
            "published_total": self._acked,
        }

    # ----- hand-over --------------------------------------------------------------------------

    def _wake(self) -> None:
        # BlockingIOError: wake-up bytes are already waiting; OSError: the link has stopped.
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _post(self, fn: Callable[[], None]) -> None:
        try:
            self._work.put_nowait(fn)
        except queue.Full:
            log.warning("MQTT hand-over queue full: dropped %s", getattr(fn, "__name__", fn))
        self._wake()

    def _respond(self, name: str, answer: Dict[str, Any]) -> None:
        self.publish(self.topics.response(name), answer, **delivery("command_response"))

    # ----- owner thread ----------------------------------------------------------------------------

    def _new_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5,
        )
        client.will_set(self.topics.status, status_payload(s.station_id, "offline"), **delivery("status"))
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            try:
                client.tls_set(ca_certs=s.ca_file or None, certfile=s.cert_file or None, keyfile=s.key_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"mqtt TLS files cannot be used (ca_file={s.ca_file}, cert_file={s.cert_file}, "
                    f"key_file={s.key_file}): {exc}"
                ) from exc
        client.max_inflight_messages_set(s.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        connect = Properties(PacketTypes.CONNECT)
        connect.MaximumPacketSize = MAX_PACKET_BYTES
        # clean start, session ends with the connection: nothing from a lost session lingers (the outbox replays)
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True, properties=connect)
        return client

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:  # e.g. the outbox disk failing: never take the station down, start over
                log.exception("MQTT link failed; dropping the connection and retrying (results stay in the outbox)")
                self._drop_connection()
                self._stopping.wait(self.settings.reconnect_min_s)
        try:
            self._shutdown()
        except Exception:
            log.exception("MQTT link failed while stopping")

    def _drop_connection(self) -> None:
        """Forget the current client after an unexpected error; the broker sees the socket close (last will)."""
        client, self._client = self._client, None
        self._connected.clear()
        self._ready.clear()
        self._inflight.clear()
        self._events.clear()
        sock = client.socket() if client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _step(self, max_wait: float = 1.0) -> None:
        now = time.monotonic()
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is None:
            if now >= self._next_attempt:
                self._attempt_connect(now)
                return
            self._wait([self._wake_r], [], min(max_wait, self._next_attempt - now))
            self._drain_work(deliver=False)
            return
        assert client is not None
        wait = min(max_wait, max(0.0, self._next_health - now)) if self.connected else max_wait
        readable, writable = self._wait([sock, self._wake_r], [sock] if client.want_write() else [], wait)
        if sock in readable:
            client.loop_read()
        if client.socket() is not None and sock in writable:
            client.loop_write()
        if client.socket() is not None:
            client.loop_misc()
        self._handle_events()
        self._drain_work(deliver=self.connected)
        if self.connected:
            self._pump_outbox()
            self._publish_state_if_due()
            if time.monotonic() >= self._next_health:
                self._publish_health()

    def _wait(self, rlist: List[Any], wlist: List[Any], timeout: float) -> Tuple[List[Any], List[Any]]:
        try:
            readable, writable, _ = select.select(rlist, wlist, [], max(0.0, timeout))
        except (OSError, ValueError):
            return [], []  # the socket closed under us; the next step sees it
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        return readable, writable

    def _attempt_connect(self, now: float) -> None:
        s = self.settings
        self._next_attempt = now + self._backoff.next_delay()
        self._client = self._new_client()
        try:
            self._client.reconnect()
        except (OSError, ssl.SSLError) as exc:
            level = logging.DEBUG if self._refused_logged else logging.WARNING
            log.log(level, "cannot connect to the MQTT broker %s:%d (%s); retrying, results wait in the outbox",
                    s.host, s.port, exc)
            self._refused_logged = True
            self._client = None
            return
        log.debug("MQTT TCP connection to %s:%d open, waiting for CONNACK", s.host, s.port)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._events.append(("connect", reason))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._events.append(("disconnect", reason))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._events.append(("puback", mid))

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._events.append(("suback", (mid, reasons)))

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._events.append(("message", (message.topic, bytes(message.payload), bool(message.retain))))

    def _handle_events(self) -> None:
        while self._events:
            kind, value = self._events.popleft()
            if kind == "connect":
                self._connected_session(value)
            elif kind == "disconnect":
                self._lost(value)
            elif kind == "puback":
                if value in self._inflight:  # status, state, health... have mids too
                    self._inflight.discard(value)
                    self._delivered(self._outbox.ack(value))
            elif kind == "message":
                self._dispatch(*value)
            elif kind == "suback" and value[0] == self._subscribe_mid:
                refused = [str(r) for r in value[1] if r.is_failure]
                if refused:
                    log.error("MQTT broker refused the command subscription (%s): commands will not arrive",
                              ", ".join(refused))
                self._ready.set()

    def _connected_session(self, reason: Any) -> None:
        client = self._client
        if client is None:
            return
        self._subscribe_mid = None
        if reason.is_failure:
            log.error("MQTT broker %s:%d refused the connection: %s", self.settings.host, self.settings.port, reason)
            return  # the broker closes the socket; the disconnect event schedules the retry
        self._connects += 1
        self._backoff.reset()
        self._refused_logged = False
        self._inflight.clear()
        backlog = self._outbox.start_replay()
        log.info("MQTT connected to %s:%d as %s%s", self.settings.host, self.settings.port, self._client_id,
                 f"; replaying {backlog} stored message(s)" if backlog else "")
        # retain-as-published: a retained command keeps its flag even when delivered live (see the docstring)
        options = SubscribeOptions(qos=delivery("command_request")["qos"], retainAsPublished=True)
        subscriptions = [(self.topics.command_filter, options)]
        if self.settings.discovery:
            subscriptions.append((f"{self.settings.ha_prefix}/{BIRTH_TOPIC_SUFFIX}", options))
        # Subscribe before announcing `online`: the broker handles one client's packets in order, so a
        # command sent by someone who has just seen `online` finds the subscription in place.
        self._subscribe_mid = client.subscribe(subscriptions)[1]
        client.publish(self.topics.status, status_payload(self.settings.station_id, "online"), **delivery("status"))
        if self.settings.discovery:
            self._publish_discovery()
        with self._lock:
            self._state_due = self._latest_state is not None
        self._next_health = time.monotonic()
        self._connected.set()

    def _lost(self, reason: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._ready.clear()
        self._client = None
        self._inflight.clear()
        if was and not self._stopping.is_set():
            log.warning("MQTT connection to %s:%d lost (%s); reconnecting, results wait in the outbox",
                        self.settings.host, self.settings.port, reason)

    def _delivered(self, row_id: Optional[int]) -> None:
        if row_id is None:
            return
        self._acked += 1
        if self._on_delivered is not None:
            try:
                self._on_delivered(row_id)
            except Exception:  # an observer's bug must not stop deliveries
                log.exception("on_delivered callback failed for outbox entry %d", row_id)

    def _dispatch(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == f"{self.settings.ha_prefix}/{BIRTH_TOPIC_SUFFIX}":
            if payload.strip() == b"online":
                log.info("Home Assistant came online: re-publishing discovery")
                self._publish_discovery()
            return
        name = self.topics.command_name(topic)
        if name is None:
            return
        if self._commands is None:
            if payload or not retained:
                self._respond(name, response("error", None, "this station takes no commands", None))
            return
        self._commands.submit(name, payload, retained)

    def _drain_work(self, deliver: bool) -> None:
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                return
            if callable(item):
                if deliver:
                    item()
                continue
            topic, payload, qos, retain = item
            if deliver and self._client is not None:
                self._client.publish(topic, payload, qos=qos, retain=retain)
            else:
                log.debug("not connected: dropped a non-durable message for %s", topic)

    def _pump_outbox(self) -> None:
        client = self._client
        room = self.settings.max_inflight - len(self._inflight)
        if client is None or room <= 0:
            return
        for entry in self._outbox.pending(room):
            info = client.publish(entry.topic, entry.wire_payload(), qos=entry.qos, retain=entry.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.debug("publish of outbox entry %d failed (%s); it stays queued", entry.row_id, info.rc)
                return
            self._outbox.mark_inflight(entry.row_id, info.mid)
            self._inflight.add(info.mid)

    def _publish_state_if_due(self) -> None:
        with self._lock:
            payload, due = self._latest_state, self._state_due
            self._state_due = False
        if due and payload is not None and self._client is not None:
            # `state` is the retained copy of the latest result (the result schema's x-mqtt `also`)
            self._client.publish(self.topics.state, payload, qos=delivery("result")["qos"], retain=True)

    def _publish_health(self) -> None:
        self._next_health = time.monotonic() + self.settings.health_interval_s
        if self._health_source is None or self._client is None:
            return
        try:
            doc = build_health(
                station=self.settings.station_id,
                outbox=self._outbox.stats().to_dict(),
                mqtt=self.stats(),
                **self._health_source(),
            )
        except Exception:  # a broken health source must not stop results from flowing
            log.exception("health source failed; no health published this time")
            return
        self._client.publish(self.topics.health, encode_payload(doc), **delivery("health"))

    def _publish_discovery(self) -> None:
        client = self._client
        if client is None or not self.settings.discovery:
            return
        with self._lock:
            fibres, removed = list(self._ha_fibres), list(self._ha_removed)
            self._ha_removed = []
        kwargs = {"station": self.settings.station_id, "discovery_prefix": self.settings.ha_prefix}
        messages = removal_messages(fibres=removed, **kwargs) + discovery_messages(
            state_topic=self.topics.state, status_topic=self.topics.status, fibres=fibres,
            sw_version=self._sw_version, **kwargs,
        )
        for topic, payload in messages:
            client.publish(topic, payload, **DISCOVERY_DELIVERY)

    def _shutdown(self) -> None:
        """Flush the outbox within the stop timeout, then `offline`, then a clean DISCONNECT."""
        deadline = time.monotonic() + self._stop_timeout
        while self.connected and time.monotonic() < deadline:
            self._step(max_wait=0.05)
            if not self._inflight and not self._outbox.pending(1):
                break
        client = self._client
        if client is not None and self.connected:
            info = client.publish(
                self.topics.status, status_payload(self.settings.station_id, "offline"), **delivery("status")
            )
            while time.monotonic() < deadline and self._client is not None and not info.is_published():
                self._step(max_wait=0.05)
            client.disconnect()
            if client.socket() is not None:
                client.loop_write()
        self._connected.clear()
        self._ready.clear()
        self._client = None
        depth = self._outbox.stats().depth
        log.info("MQTT link stopped; %d message(s) left in the outbox for the next start", depth)

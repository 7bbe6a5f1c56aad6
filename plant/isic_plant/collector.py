"""The collector: every station's result, alarm, health and status from MQTT into PostgreSQL.

Delivery is at least once from end to end, and storage exactly once:
- an MQTT 5 persistent session (clean_start off, a session expiry), QoS 1, and *manual* PUBACKs:
  a message is acknowledged only after the transaction holding it has committed. A collector
  killed mid-batch has its unacknowledged messages redelivered when it reconnects;
- results and alarms are keyed by `message_id` (the station's outbox re-sends with the same id),
  so a redelivery or a `replayed` copy is counted, not stored again (`store.write_batch`);
- results and alarms come through a shared subscription `$share/<group>/<prefix>/+/result|alarm`:
  several collectors with the same group split the load, each message going to one of them;
- health and status are retained and few, and MQTT never sends retained messages to a shared
  subscription, so every collector subscribes to them directly and the keys drop the doubles.
A database that fails makes the collector keep the batch (unacknowledged) and retry with backoff;
the broker holds back further messages (receive maximum) meanwhile. The broker keeps giving a
stopped member of the group its share (queued in its session, delivered when it returns), so a
collector taken out of service is retired (`collect --retire`): it stores what its session holds,
unsubscribes and ends the session.
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from isic_plant import db
from isic_plant.documents import Document, Reject, parse
from isic_plant.spc_monitor import SpcMonitor
from isic_plant.store import BatchOutcome, write_batch

log = logging.getLogger(__name__)

RETIRE_IDLE_S = 2.0  # a retiring collector stops after this long without a message



@dataclass(frozen=True)
class CollectorSettings:
    host: str
    port: int
    dsn: str
    prefix: str = "isic"
    client_id: str = "isic-plant-collector"
    share_group: str = "isic-plant"
    username: Optional[str] = None
    password: Optional[str] = None
    keepalive_s: int = 30
    batch_max: int = 500
    batch_wait_s: float = 0.05
    spc_rules: Tuple[str, ...] = ()
    spc_baseline: int = 20
    session_expiry_s: int = 7 * 24 * 3600  # the broker keeps a stopped collector's messages this long
    retire: bool = False  # store what the session holds, then end the session (a collector taken out of service)

    def subscriptions(self) -> List[Tuple[str, int]]:
        shared = [(f"$share/{self.share_group}/{self.prefix}/+/{kind}", 1) for kind in ("result", "alarm")]
        return shared + [(f"{self.prefix}/+/{kind}", 1) for kind in ("health", "status")]


class Collector:
    """Runs until `stop()`: MQTT network on paho's thread, batching and the database on the caller's."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self._incoming: queue.Queue[Tuple[str, bytes, int, int]] = queue.Queue()
        self._acked_publishes: queue.Queue[int] = queue.Queue()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._last_message = time.monotonic()
        self.totals = {"result": 0, "alarm": 0, "health": 0, "status": 0, "copies": 0, "rejected": 0, "spc": 0}
        self._client = self._new_client()
        self.spc = SpcMonitor(settings.spc_rules, settings.spc_baseline, settings.prefix, self._publish)

    def _new_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=paho.MQTTv5,
                             manual_ack=True)
        if s.username:
            client.username_pw_set(s.username, s.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        # Back within 0.5 s: after a broker restart, results published before the shared subscription is
        # made again have no subscriber (Mosquitto 2.0 does not restore shared subscriptions; README).
        client.reconnect_delay_set(0.1, 0.5)
        return client

    # paho's thread: only hand over
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker %s:%s refused the connection: %s", self.settings.host, self.settings.port, reason)
            return
        log.info("connected to %s:%s as %s (session present: %s)", self.settings.host, self.settings.port,
                 self.settings.client_id, flags.session_present)
        if self.settings.retire:  # no new messages: the group's other members take them from now on
            client.unsubscribe([topic for topic, _ in self.settings.subscriptions()])
        else:
            client.subscribe(self.settings.subscriptions())
        self.connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("lost the broker (%s); reconnecting, unacknowledged messages will be redelivered", reason)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._last_message = time.monotonic()
        self._incoming.put((message.topic, bytes(message.payload), message.mid, message.qos))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._acked_publishes.put(mid)

    def _publish(self, topic: str, payload: bytes) -> Optional[int]:
        if not self.connected.is_set():
            return None
        info = self._client.publish(topic, payload, qos=1)
        return info.mid if info.rc == paho.MQTT_ERR_SUCCESS else None

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Connect and store until stopped (the database schema is migrated first)."""
        s = self.settings
        db.migrate(s.dsn)
        conn = db.connect(s.dsn)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        props.ReceiveMaximum = min(65535, 2 * s.batch_max)
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        self._client.loop_start()
        log.info("collecting %s/+/(result|alarm|health|status) from %s:%s into %s (shared group %s)",
                 s.prefix, s.host, s.port, db.safe_dsn(s.dsn), s.share_group)
        last_report = last_pending = time.monotonic()
        try:
            while not self._stop.is_set():
                batch = self._next_batch()
                if batch:
                    conn = self._store(conn, batch)
                now = time.monotonic()
                if now - last_pending >= 2.0 or not self._acked_publishes.empty():
                    conn = self._spc_housekeeping(conn)
                    last_pending = now
                if now - last_report >= 30.0:
                    log.info("stored so far: %s", self.totals)
                    last_report = now
                if (s.retire and self.connected.is_set() and self._incoming.empty()
                        and now - self._last_message >= RETIRE_IDLE_S):
                    log.info("retired: the session's messages are stored; ending the session %s", s.client_id)
                    break
        finally:
            end = Properties(PacketTypes.DISCONNECT)
            end.SessionExpiryInterval = 0
            self._client.disconnect(properties=end if s.retire else None)
            self._client.loop_stop()
            conn.close()
            log.info("stopped; stored %s", self.totals)

    def _next_batch(self) -> List[Tuple[str, bytes, int, int]]:
        try:
            batch = [self._incoming.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.settings.batch_wait_s
        while len(batch) < self.settings.batch_max:
            try:
                batch.append(self._incoming.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _store(self, conn: psycopg.Connection, batch: List[Tuple[str, bytes, int, int]]) -> psycopg.Connection:
        """Write the batch (retrying through database failures), then acknowledge it; the live connection."""
        items = [parse(topic, payload, self.settings.prefix) for topic, payload, _, _ in batch]
        delay = 0.5
        while True:
            try:
                outcome = write_batch(conn, items)
                break
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                # a document the database refuses (a NUL in a string, a number beyond bigint): one message
                # must not block the others, so store them one by one and keep that one as a reject
                log.warning("the database refused a batch (%s); storing its %d messages one by one",
                            str(exc).strip().splitlines()[0], len(items))
                outcome = self._store_one_by_one(conn, items)
                break
            except (psycopg.OperationalError, psycopg.errors.DeadlockDetected) as exc:
                log.error("storing a batch of %d failed (%s); retrying in %.1f s, nothing is acknowledged",
                          len(batch), str(exc).strip().splitlines()[0], delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)
                conn = self._reconnect(conn)
        for _, _, mid, qos in batch:
            self._client.ack(mid, qos)
        for kind, n in outcome.stored.items():
            self.totals[kind] += n
        self.totals["copies"] += outcome.copies
        self.totals["rejected"] += outcome.rejected
        if outcome.new_results:
            try:
                self.totals["spc"] += self.spc.check(conn, outcome.new_results)
            except psycopg.Error as exc:  # SPC is derived data: the results are safe, the next batch tries again
                log.error("SPC check failed: %s", str(exc).strip())
                conn = self._reconnect(conn)
        return conn

    def _store_one_by_one(self, conn: psycopg.Connection, items: List[Union[Document, Reject]]) -> BatchOutcome:
        total = BatchOutcome()
        for item in items:
            try:
                outcome = write_batch(conn, [item])
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                topic = f"{self.settings.prefix}/{item.station}/{item.kind}"
                reason = f"refused by the database: {str(exc).strip().splitlines()[0]}"
                outcome = write_batch(conn, [Reject(topic, item.text.encode("utf-8"), reason)])
            total.stored.update(outcome.stored)
            total.copies += outcome.copies
            total.rejected += outcome.rejected
            for lot, ids in outcome.new_results.items():
                total.new_results.setdefault(lot, []).extend(ids)
        return total

    def _spc_housekeeping(self, conn: psycopg.Connection) -> psycopg.Connection:
        acked = []
        while not self._acked_publishes.empty():
            acked.append(self._acked_publishes.get_nowait())
        try:
            self.spc.acknowledged(conn, acked)
            if self.connected.is_set():
                self.spc.publish_pending(conn)
            else:
                self.spc.forget_in_flight()
        except psycopg.Error as exc:
            log.error("publishing SPC alarms failed: %s", str(exc).strip())
            conn = self._reconnect(conn)
        return conn

    def _reconnect(self, conn: psycopg.Connection) -> psycopg.Connection:
        if not conn.closed and not conn.broken:
            try:
                conn.rollback()
                return conn
            except psycopg.Error:
                pass
        conn.close()
        try:
            return db.connect(self.settings.dsn)
        except Exception as exc:  # noqa: BLE001 - the next attempt reports it again
            log.error("database still unreachable: %s", exc)
            return conn

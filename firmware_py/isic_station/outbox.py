"""The durable outbox: results and alarms live in SQLite until the broker acknowledges them.

paho keeps QoS 1 messages in memory only, so a broker outage followed by a restart (or a power
cut) would lose them. Every result is therefore written here *before* it is published; the MQTT
link sends entries oldest first, records the paho message id (mid) of each one in flight, and
deletes an entry only when its PUBACK arrives. Entries still here when the link (re)connects are
sent again with `"replayed": true` (same message_id, so consumers can drop duplicates).

The same database keeps the station's result sequence counter, so sequence numbers keep
increasing across restarts, and the count of entries dropped because the disk quota was full.

Durability: WAL journal. Every commit survives SIGKILL (the WAL is in the OS page cache), but a
power cut - likely on a plant floor - can roll back commits made with `synchronous=NORMAL`. So the
commit that stores a message runs with `synchronous=FULL` (fsync'd before `add` returns: a result
the station handed over is on disk), and the other writes stay NORMAL, saving three fsyncs per
result: the WAL is sequential, so the next FULL commit makes an earlier sequence increment durable
too (a lost increment was never published); in-flight marks are cleared on every (re)connect anyway;
a lost deletion only re-sends a message consumers already drop as a duplicate (at-least-once).
"""

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from isic_station.errors import ConfigError, StateDirError

log = logging.getLogger(__name__)

DEFAULT_QUOTA_BYTES = 64 * 1024 * 1024
MIN_QUOTA_BYTES = 16 * 1024
_DB_LAYOUT_VERSION = 1

Payload = Union[bytes, str, Mapping[str, Any]]


@dataclass(frozen=True)
class OutboxEntry:
    """One stored message; `replayed` is set once it is sent after an outage or a restart."""

    row_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float
    replayed: bool

    def wire_payload(self) -> bytes:
        """The bytes to publish: a JSON object payload gets `"replayed": true` when this is a re-send."""
        if not self.replayed:
            return self.payload
        try:
            doc = json.loads(self.payload)
        except ValueError:
            return self.payload
        if not isinstance(doc, dict):
            return self.payload
        doc["replayed"] = True
        return encode_payload(doc)


@dataclass(frozen=True)
class OutboxStats:
    """What health reports about the outbox."""

    depth: int
    oldest_age_s: Optional[float]
    bytes: int
    quota_bytes: int
    dropped_total: int

    def to_dict(self) -> Dict[str, Any]:
        """The health document's `outbox` object."""
        return {
            "depth": self.depth,
            "oldest_age_s": None if self.oldest_age_s is None else round(self.oldest_age_s, 3),
            "bytes": self.bytes,
            "quota_bytes": self.quota_bytes,
            "dropped_total": self.dropped_total,
        }


def encode_payload(payload: Payload) -> bytes:
    """Bytes as they go on the wire: JSON objects compact and UTF-8, strings UTF-8, bytes unchanged."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Outbox:
    """SQLite store of messages waiting for their PUBACK, bounded by a quota on stored bytes.

    The quota counts topic + payload bytes; the file is larger by SQLite's page overhead and keeps
    its size after a backlog drains (freed pages are reused, not returned to the file system).

    Thread-safe (one connection behind a lock): the pipeline adds, the MQTT owner thread sends
    and acknowledges, health reads the stats.
    """

    def __init__(self, path: Union[str, Path], quota_bytes: int = DEFAULT_QUOTA_BYTES) -> None:
        if quota_bytes < MIN_QUOTA_BYTES:
            raise ConfigError(f"outbox quota of {quota_bytes} bytes is too small: expected at least {MIN_QUOTA_BYTES}")
        self.path = Path(path)
        self.quota_bytes = int(quota_bytes)
        self._lock = threading.RLock()
        self._db = self._open(self.path)
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()
            self._bytes = int(row[0])

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise PermissionError(f"no write permission on {path.parent}")
            db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created_at REAL NOT NULL,"
                " size INTEGER NOT NULL, replayed INTEGER NOT NULL DEFAULT 0, inflight_mid INTEGER)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS outbox_mid ON outbox(inflight_mid)")
            db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute(f"PRAGMA user_version={_DB_LAYOUT_VERSION}")
            return db
        except (OSError, sqlite3.Error) as exc:
            raise StateDirError(
                f"cannot use the outbox database {path}: {exc} (the state directory must be writable "
                "by the station's user)"
            ) from exc

    def _bump(self, name: str, by: int) -> int:
        # INSERT OR IGNORE + UPDATE rather than an UPSERT: the board's SQLite (Ubuntu 18.04: 3.22) predates it.
        self._db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))
        return int(self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _write(self, fn: Any, *args: Any, durable: bool = False) -> Any:
        """Run fn in one transaction, fsync'd before returning when `durable`; a full disk or lost
        directory becomes StateDirError."""
        with self._lock:
            try:
                if durable:
                    self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    value = fn(*args)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return value
            except sqlite3.Error as exc:
                raise StateDirError(f"outbox database {self.path} cannot be written: {exc}") from exc
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def next_sequence(self) -> int:
        """The next result sequence number (1, 2, ...), committed before it is returned."""
        return self._write(self._bump, "sequence", 1)

    def add(self, topic: str, payload: Payload, qos: int = 1, retain: bool = False) -> int:
        """Store a message to publish and return its row id; the oldest entries are dropped
        (counted, logged) when the quota would be exceeded."""
        if qos not in (1, 2):
            raise ValueError(f"outbox entries need QoS 1 or 2 (a PUBACK to delete them on), got {qos}")
        data = encode_payload(payload)
        size = len(data) + len(topic.encode("utf-8"))
        if size > self.quota_bytes:
            raise ValueError(f"a {size}-byte message cannot fit the outbox quota of {self.quota_bytes} bytes")
        return self._write(self._insert, topic, data, int(qos), bool(retain), size, durable=True)

    def _insert(self, topic: str, data: bytes, qos: int, retain: bool, size: int) -> int:
        dropped = 0
        while self._bytes + size > self.quota_bytes:
            row = self._db.execute("SELECT id, size FROM outbox ORDER BY id LIMIT 1").fetchone()
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._bytes -= int(row[1])
            dropped += 1
        if dropped:
            total = self._bump("dropped", dropped)
            log.warning(
                "outbox quota of %d bytes full: dropped the %d oldest unsent message(s) (%d dropped in total)",
                self.quota_bytes, dropped, total,
            )
        cur = self._db.execute(
            "INSERT INTO outbox(topic, payload, qos, retain, created_at, size) VALUES (?, ?, ?, ?, ?, ?)",
            (topic, data, qos, int(retain), time.time(), size),
        )
        self._bytes += size
        return int(cur.lastrowid)

    def pending(self, limit: int) -> List[OutboxEntry]:
        """Up to `limit` entries not in flight, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created_at, replayed FROM outbox"
                " WHERE inflight_mid IS NULL ORDER BY id LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [OutboxEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], bool(r[6])) for r in rows]

    def mark_inflight(self, row_id: int, mid: int) -> None:
        """Record that entry `row_id` was handed to paho as message `mid`."""
        self._write(lambda: self._db.execute("UPDATE outbox SET inflight_mid = ? WHERE id = ?", (mid, row_id)))

    def ack(self, mid: int) -> Optional[int]:
        """The PUBACK for `mid` arrived: delete its entry and return its row id (None when no entry is in
        flight under `mid`, e.g. the quota dropped it meanwhile)."""
        return self._write(self._delete_mid, mid)

    def _delete_mid(self, mid: int) -> Optional[int]:
        row = self._db.execute("SELECT id, size FROM outbox WHERE inflight_mid = ?", (mid,)).fetchone()
        if row is None:
            return None
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
        self._bytes -= int(row[1])
        return int(row[0])

    def start_replay(self) -> int:
        """A new connection: no PUBACK will come for anything sent before, so every stored entry is
        pending again and will be sent as replayed. Returns how many entries that is."""
        return int(
            self._write(
                lambda: self._db.execute("UPDATE outbox SET inflight_mid = NULL, replayed = 1").rowcount
            )
        )

    def inflight_count(self) -> int:
        """Entries handed to paho and not yet acknowledged."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox WHERE inflight_mid IS NOT NULL").fetchone()[0])

    def stats(self) -> OutboxStats:
        """Depth, age of the oldest entry, bytes used and dropped count (for health)."""
        with self._lock:
            depth, oldest = self._db.execute("SELECT COUNT(*), MIN(created_at) FROM outbox").fetchone()
            dropped = self._counter("dropped")
            used = self._bytes
        age = None if oldest is None else max(0.0, time.time() - float(oldest))
        return OutboxStats(int(depth), age, used, self.quota_bytes, dropped)

    def close(self) -> None:
        """Close the database (a WAL checkpoint happens on close)."""
        with self._lock:
            self._db.close()

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

Faults of its own disk or file, none of which may lose or renumber a result:
- a damaged database (not a database, a malformed page, a failed integrity check) is moved aside
  as `<name>.corrupt-<UTC time>` (kept for forensics, with its -wal), whatever rows can still be
  read are copied into a new database (sent as replays), and a critical incident is recorded;
- the sequence counter also lives apart from the database: `<name minus suffix>.high-water` holds
  a reserved mark, rewritten (atomically, fsync'd) once every `SEQUENCE_BLOCK` numbers. A database
  that was emptied, lost or replaced continues after that mark, never below it: numbers in between
  that were never issued are a gap, reported as an incident, never a repeat;
- a full or failing disk (SQLite's SQLITE_FULL / SQLITE_IOERR) is a storage fault: `add` keeps the
  message in a bounded memory queue (`HELD_BYTES`) and writes it, in order, once the disk takes
  writes again; sequence numbers keep coming from memory; `fault` names the cause meanwhile;
  in-flight marks and deletions are kept in memory and written when they can be;
- the quota drops the oldest droppable entries (results), never alarms (`droppable=False`).
Incidents (`take_incidents()`) are what a person must hear of; the station turns them into
`storage_fault` alarms.
"""

import collections
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Deque, Dict, List, Mapping, Optional, Set, Tuple, Union

from isic_common.errors import ConfigError, StateDirError
from isic_station.atomic_file import write_json

log = logging.getLogger(__name__)

DEFAULT_QUOTA_BYTES = 64 * 1024 * 1024
MIN_QUOTA_BYTES = 16 * 1024
_DB_LAYOUT_VERSION = 2  # 2: the `droppable` column
# Sequence numbers reserved per write of the high-water file: at most this many are skipped when the
# database is lost, and the file is written once per this many results.
SEQUENCE_BLOCK = 100
# Messages kept in memory while the disk takes no writes; beyond it the oldest results are dropped.
HELD_BYTES = 4 * 1024 * 1024
WAL_PAGES = 64
# How often a failing disk is tried again (pending/stats call often).
RETRY_S = 1.0
# A long outage drops a result per new one: one incident per this many seconds says how many.
QUOTA_INCIDENT_EVERY_S = 600.0

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
    held: int = 0
    storage_fault: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The health document's `outbox` object."""
        return {
            "depth": self.depth,
            "oldest_age_s": None if self.oldest_age_s is None else round(self.oldest_age_s, 3),
            "bytes": self.bytes,
            "quota_bytes": self.quota_bytes,
            "dropped_total": self.dropped_total,
            "held": self.held,
            "storage_fault": self.storage_fault,
        }


@dataclass(frozen=True)
class Incident:
    """Something about the outbox's storage a person must hear of (the station raises an alarm)."""

    severity: str  # warning | critical
    message: str
    details: Dict[str, Any]


@dataclass(frozen=True)
class _Held:
    topic: str
    data: bytes
    qos: int
    retain: bool
    size: int
    created_at: float
    droppable: bool


class _StorageFull(Exception):
    """A write failed for lack of space or an I/O error (kept in memory, retried)."""


def _is_corruption(exc: BaseException) -> bool:
    """SQLite says the file is damaged (not: full, locked, I/O error, a constraint)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.OperationalError, sqlite3.IntegrityError, sqlite3.ProgrammingError))


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
    and acknowledges, health reads the stats. Storage faults: see the module docstring.
    """

    def __init__(self, path: Union[str, Path], quota_bytes: int = DEFAULT_QUOTA_BYTES) -> None:
        if quota_bytes < MIN_QUOTA_BYTES:
            raise ConfigError(f"outbox quota of {quota_bytes} bytes is too small: expected at least {MIN_QUOTA_BYTES}")
        self.path = Path(path)
        self.high_water_path = self.path.with_suffix(".high-water")
        self.quota_bytes = int(quota_bytes)
        self._lock = threading.RLock()
        self._incidents: List[Incident] = []
        self._held: Deque[_Held] = collections.deque()
        self._held_bytes = 0
        self._held_dropped = 0
        self._inflight: Dict[int, int] = {}  # mid -> row id (the truth; the database's marks follow it)
        self._unwritten_deletes: Set[int] = set()  # acknowledged rows whose deletion the disk refused
        self._replay_mark = 0  # rows up to this id are re-sends, whether or not the disk took the mark
        self.fault: Optional[str] = None
        self._next_retry = 0.0
        self._quota_incident_at: Optional[float] = None
        self._dropped_unreported = 0
        with self._lock:
            self._db = self._open_checked()
            self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
            self._reserved = self._read_high_water()
            self._last_sequence = self._initial_sequence()

    # ----- opening, corruption ---------------------------------------------------------------------

    def _open_checked(self) -> sqlite3.Connection:
        """Open the database; a damaged one is moved aside, its readable rows copied into a new one."""
        try:
            db = self._open(self.path)
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
            if problem == "ok":
                return db
            db.close()
            reason = f"integrity check failed: {problem}"
        except StateDirError as exc:
            if not _is_corruption(exc.__cause__):
                raise
            reason = str(exc.__cause__)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise StateDirError(f"cannot use the outbox database {self.path}: {exc}") from exc
            reason = str(exc)
        return self._replace_damaged(reason)

    def _replace_damaged(self, reason: str) -> sqlite3.Connection:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(str(self.path) + suffix)
                if source.exists():
                    os.replace(source, str(kept) + suffix)
        except OSError as exc:
            raise StateDirError(f"outbox database {self.path} is damaged ({reason}) and cannot be moved "
                                f"aside: {exc}") from exc
        db = self._open(self.path)
        rows, counters = _salvage(kept)
        if counters:
            for name, value in counters.items():
                db.execute("INSERT OR REPLACE INTO counters(name, value) VALUES (?, ?)", (name, value))
        for topic, payload, qos, retain, created_at, size, droppable in rows:
            db.execute("INSERT INTO outbox(topic, payload, qos, retain, created_at, size, replayed, droppable)"
                       " VALUES (?, ?, ?, ?, ?, ?, 1, ?)", (topic, payload, qos, retain, created_at, size, droppable))
        message = (f"outbox database {self.path} was damaged ({reason}): moved aside to {kept.name}, "
                   f"{len(rows)} unsent message(s) recovered from it into a new database")
        log.critical("%s", message)
        self._incidents.append(Incident("critical", message, {
            "path": str(self.path), "kept_as": str(kept), "reason": reason, "recovered": len(rows)}))
        return db

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise PermissionError(f"no write permission on {path.parent}")
            db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # The WAL is copied back every WAL_PAGES and cut back to its limit, so it cannot take a
            # small state disk (SQLite's default lets it reach 4 MiB and stay that size).
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created_at REAL NOT NULL,"
                " size INTEGER NOT NULL, replayed INTEGER NOT NULL DEFAULT 0, inflight_mid INTEGER,"
                " droppable INTEGER NOT NULL DEFAULT 1)"
            )
            columns = [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
            if "droppable" not in columns:  # layout 1
                db.execute("ALTER TABLE outbox ADD COLUMN droppable INTEGER NOT NULL DEFAULT 1")
            db.execute("CREATE INDEX IF NOT EXISTS outbox_mid ON outbox(inflight_mid)")
            db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            if db.execute("PRAGMA user_version").fetchone()[0] != _DB_LAYOUT_VERSION:  # no write on a full disk
                db.execute(f"PRAGMA user_version={_DB_LAYOUT_VERSION}")
            return db
        except (OSError, sqlite3.Error) as exc:
            raise StateDirError(
                f"cannot use the outbox database {path}: {exc} (the state directory must be writable "
                "by the station's user)"
            ) from exc

    # ----- the sequence and its high-water mark ----------------------------------------------------

    def _read_high_water(self) -> Optional[int]:
        try:
            return int(json.loads(self.high_water_path.read_text(encoding="utf-8"))["reserved"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("sequence high-water file %s cannot be read (%s): continuing from the database's counter",
                      self.high_water_path, exc)
            return None

    def _initial_sequence(self) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = 'sequence'").fetchone()
        stored = None if row is None else int(row[0])
        reserved = self._reserved
        if reserved is None or (stored is not None and stored > reserved - SEQUENCE_BLOCK):
            return stored or 0  # the normal case: the database's counter is inside the reserved block
        # The database lost its counter (emptied, replaced, recovered without it) or went back in time:
        # continue after the mark, so no number already used can come again.
        message = (f"outbox sequence counter {'missing' if stored is None else f'at {stored}'} in {self.path}, "
                   f"below the high-water mark {reserved} in {self.high_water_path.name}: results continue "
                   f"at {reserved + 1}; numbers before it that were never published are a gap, none repeats")
        log.error("%s", message)
        self._incidents.append(Incident("warning", message, {
            "path": str(self.path), "counter": stored, "high_water": reserved, "continues_at": reserved + 1}))
        return reserved

    def next_sequence(self) -> int:
        """The next result sequence number (1, 2, ...): never one already taken, even when the database
        is lost (high-water mark) or the disk is full (from memory, stored with the result)."""
        with self._lock:
            number = self._last_sequence + 1
            if self._reserved is None or number > self._reserved:
                try:
                    write_json(self.high_water_path, {"reserved": number + SEQUENCE_BLOCK - 1,
                                                      "database": self.path.name})
                    self._reserved = number + SEQUENCE_BLOCK - 1
                except OSError as exc:
                    self._storage_failed(f"sequence high-water file {self.high_water_path} cannot be written: {exc}")
            self._last_sequence = number
            with contextlib.suppress(_StorageFull):  # then `add` stores it with the result, later
                self._write(self._set_counter, "sequence", number)
            return number

    # ----- writes ------------------------------------------------------------------------------------

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))
        self._db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = ?", (value, name))

    def _bump(self, name: str, by: int) -> int:
        # INSERT OR IGNORE + UPDATE rather than an UPSERT: the board's SQLite (Ubuntu 18.04: 3.22) predates it.
        self._db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))
        return int(self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _write(self, fn: Any, *args: Any, durable: bool = False) -> Any:
        """Run fn in one transaction, fsync'd before returning when `durable`. A full or failing disk
        raises _StorageFull (and sets `fault`); a damaged database is replaced (see `_replace_damaged`)
        and the write tried once more; anything else becomes StateDirError."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    value = self._transaction(fn, args, durable)
                except sqlite3.DatabaseError as exc:
                    if _is_corruption(exc) and attempt == 1:
                        self._recover_damaged(str(exc))
                        continue
                    if isinstance(exc, sqlite3.OperationalError) and _is_storage_error(exc):
                        self._storage_failed(f"outbox database {self.path} cannot be written: {exc}")
                        raise _StorageFull(str(exc)) from exc
                    raise StateDirError(f"outbox database {self.path} cannot be written: {exc}") from exc
                return value
        raise AssertionError("unreachable")  # pragma: no cover

    def _transaction(self, fn: Any, args: Tuple[Any, ...], durable: bool) -> Any:
        try:
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                value = fn(*args)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return value
        finally:
            if durable:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def _read(self, sql: str, args: Tuple[Any, ...] = ()) -> List[Any]:
        """The rows of a query; a database found damaged is replaced (`_recover_damaged`) and read again."""
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise StateDirError(f"outbox database {self.path} cannot be read: {exc}") from exc
                self._recover_damaged(str(exc))
                return self._db.execute(sql, args).fetchall()

    def _recover_damaged(self, reason: str) -> None:
        """The database turned out damaged while running: replace it, keep what can be read."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db = self._replace_damaged(reason)
        self._inflight.clear()
        self._unwritten_deletes.clear()
        self._bytes = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])
        self._db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES ('sequence', 0)")
        self._db.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'sequence'", (self._last_sequence,))

    def _storage_failed(self, message: str) -> None:
        if self.fault is None:
            log.critical("%s; results are kept in memory (up to %d bytes) and written when it works again",
                         message, HELD_BYTES)
            self._incidents.append(Incident("critical", f"storage fault: {message}; results are held in memory "
                                            "and written once the disk takes writes again",
                                            {"path": str(self.path), "error": message}))
        self.fault = message
        self._next_retry = time.monotonic() + RETRY_S

    def _storage_works(self) -> None:
        if self.fault is not None and not self._held:
            log.warning("outbox storage works again (%s was failing)", self.path)
            self.fault = None

    def add(self, topic: str, payload: Payload, qos: int = 1, retain: bool = False, droppable: bool = True) -> int:
        """Store a message to publish and return its row id; the oldest droppable entries are dropped
        (counted, logged, an incident) when the quota would be exceeded; `droppable=False` (alarms) is
        never dropped. On a full or failing disk the message is held in memory and a negative id returned."""
        if qos not in (1, 2):
            raise ValueError(f"outbox entries need QoS 1 or 2 (a PUBACK to delete them on), got {qos}")
        data = encode_payload(payload)
        size = len(data) + len(topic.encode("utf-8"))
        if size > self.quota_bytes:
            raise ValueError(f"a {size}-byte message cannot fit the outbox quota of {self.quota_bytes} bytes")
        entry = _Held(topic, data, int(qos), bool(retain), size, time.time(), bool(droppable))
        with self._lock:
            if not self._flush_held():
                return self._hold(entry)
            try:
                row = self._write(self._insert, entry, durable=True)
            except _StorageFull:
                return self._hold(entry)
            self._storage_works()
            return row

    def _hold(self, entry: _Held) -> int:
        self._held.append(entry)
        self._held_bytes += entry.size
        dropped = 0
        while self._held_bytes > HELD_BYTES:
            oldest = next((e for e in self._held if e.droppable and e is not entry), None)
            if oldest is None:
                break
            self._held.remove(oldest)
            self._held_bytes -= oldest.size
            dropped += 1
        if dropped:
            self._held_dropped += dropped
            message = (f"storage fault lasted too long: dropped the {dropped} oldest result(s) held in memory "
                       f"({self._held_dropped} so far); {len(self._held)} still held")
            log.critical("%s", message)
            self._incidents.append(Incident("critical", message, {"dropped": dropped,
                                                                  "held_dropped_total": self._held_dropped}))
        return -len(self._held)

    def _flush_held(self) -> bool:
        """Write held messages (oldest first) and deletions the disk refused; True when nothing is left
        over. Tries at most once per RETRY_S while failing."""
        if not self._held and not self._unwritten_deletes:
            return True
        if time.monotonic() < self._next_retry:
            return False
        try:
            if self._held:
                self._write(self._insert_many, list(self._held), durable=True)
                log.warning("outbox storage works again: wrote %d message(s) held in memory", len(self._held))
                self._held.clear()
                self._held_bytes = 0
            for row_id in sorted(self._unwritten_deletes):
                self._write(self._delete_row, row_id)
                self._unwritten_deletes.discard(row_id)
        except _StorageFull:
            return False
        self._storage_works()
        return True

    def _insert_many(self, entries: List[_Held]) -> None:
        for entry in entries:
            self._insert(entry)

    def _insert(self, entry: _Held) -> int:
        dropped = 0
        while self._bytes + entry.size > self.quota_bytes:
            row = self._db.execute("SELECT id, size FROM outbox WHERE droppable = 1 ORDER BY id LIMIT 1").fetchone()
            if row is None:
                break  # only alarms left: they are never dropped (they are small and few)
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self._bytes -= int(row[1])
            dropped += 1
        if dropped:
            total = self._bump("dropped", dropped)
            log.warning(
                "outbox quota of %d bytes full: dropped the %d oldest unsent message(s) (%d dropped in total)",
                self.quota_bytes, dropped, total,
            )
            self._dropped_unreported += dropped
            now = time.monotonic()
            if self._quota_incident_at is None or now - self._quota_incident_at >= QUOTA_INCIDENT_EVERY_S:
                self._quota_incident_at = now
                self._incidents.append(Incident("warning", (
                    f"outbox quota of {self.quota_bytes} bytes full (the broker has not taken results for a "
                    f"while): dropped the {self._dropped_unreported} oldest unsent result(s), {total} in total"),
                    {"dropped": self._dropped_unreported, "dropped_total": total, "quota_bytes": self.quota_bytes}))
                self._dropped_unreported = 0
        cur = self._db.execute(
            "INSERT INTO outbox(topic, payload, qos, retain, created_at, size, droppable) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.topic, entry.data, entry.qos, int(entry.retain), entry.created_at, entry.size,
             int(entry.droppable)),
        )
        self._bytes += entry.size
        self._set_counter("sequence", self._last_sequence)
        return int(cur.lastrowid)

    # ----- the MQTT link's side ----------------------------------------------------------------------

    def pending(self, limit: int) -> List[OutboxEntry]:
        """Up to `limit` entries not in flight, oldest first (held messages once they are written)."""
        with self._lock:
            self._flush_held()
            skip = set(self._inflight.values()) | self._unwritten_deletes
            rows = self._read("SELECT id, topic, payload, qos, retain, created_at, replayed FROM outbox ORDER BY id"
                              " LIMIT ?", (int(limit) + len(skip),))
            mark = self._replay_mark
        entries = [OutboxEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], bool(r[6]) or r[0] <= mark)
                   for r in rows if r[0] not in skip]
        return entries[: int(limit)]

    def mark_inflight(self, row_id: int, mid: int) -> None:
        """Record that entry `row_id` was handed to paho as message `mid` (in memory; on disk when it can)."""
        with self._lock:
            self._inflight[mid] = row_id
            with contextlib.suppress(_StorageFull):
                self._write(lambda: self._db.execute("UPDATE outbox SET inflight_mid = ? WHERE id = ?",
                                                     (mid, row_id)))

    def ack(self, mid: int) -> Optional[int]:
        """The PUBACK for `mid` arrived: delete its entry and return its row id (None when no entry is in
        flight under `mid`, e.g. the quota dropped it meanwhile)."""
        with self._lock:
            row_id = self._inflight.pop(mid, None)
            if row_id is None:
                return None
            try:
                deleted = self._write(self._delete_row, row_id)
            except _StorageFull:
                self._unwritten_deletes.add(row_id)  # deleted once the disk takes writes
                return row_id
            return row_id if deleted else None

    def _delete_row(self, row_id: int) -> bool:
        row = self._db.execute("SELECT size FROM outbox WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        self._bytes -= int(row[0])
        return True

    def start_replay(self) -> int:
        """A new connection: no PUBACK will come for anything sent before, so every stored entry is
        pending again and will be sent as replayed. Returns how many entries that is."""
        with self._lock:
            self._inflight.clear()
            (top,) = self._read("SELECT COALESCE(MAX(id), 0), COUNT(*) FROM outbox")
            self._replay_mark = int(top[0])
            with contextlib.suppress(_StorageFull):
                self._write(lambda: self._db.execute("UPDATE outbox SET inflight_mid = NULL, replayed = 1"))
            return int(top[1]) - len(self._unwritten_deletes)

    def inflight_count(self) -> int:
        """Entries handed to paho and not yet acknowledged."""
        with self._lock:
            return len(self._inflight)

    # ----- reporting -------------------------------------------------------------------------------

    def take_incidents(self) -> List[Incident]:
        """Incidents since the last call (corruption, sequence gaps, storage faults, quota drops), oldest first."""
        with self._lock:
            taken, self._incidents = self._incidents, []
        return taken

    def stats(self) -> OutboxStats:
        """Depth, age of the oldest entry, bytes used, dropped count, held messages and the storage fault."""
        with self._lock:
            self._flush_held()
            ((depth, oldest),) = self._read("SELECT COUNT(*), MIN(created_at) FROM outbox")
            dropped = self._counter("dropped")
            used = self._bytes
            held, fault = len(self._held), self.fault
        age = None if oldest is None else max(0.0, time.time() - float(oldest))
        return OutboxStats(int(depth) - len(self._unwritten_deletes), age, used, self.quota_bytes, dropped,
                           held, fault)

    def close(self) -> None:
        """Write what is held if the disk allows, then close the database (a WAL checkpoint happens on close)."""
        with self._lock:
            if self._held or self._unwritten_deletes:
                self._next_retry = 0.0
                if not self._flush_held():
                    log.error("outbox closing with %d message(s) held in memory that the disk did not take: "
                              "they are lost (%s)", len(self._held), self.fault)
            self._db.close()


def _is_storage_error(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_FULL, SQLITE_IOERR and their kin: the disk, not the request."""
    text = str(exc).lower()
    return any(word in text for word in ("full", "i/o error", "disk", "readonly", "read-only", "unable to open"))


def _salvage(path: Path) -> Tuple[List[Tuple[Any, ...]], Dict[str, int]]:
    """The rows and counters of a damaged database that can still be read (read-only, best effort)."""
    rows: List[Tuple[Any, ...]] = []
    counters: Dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return rows, counters
    try:
        with contextlib.suppress(sqlite3.Error):
            for name, value in db.execute("SELECT name, value FROM counters"):
                counters[str(name)] = int(value)
        with contextlib.suppress(sqlite3.Error):
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            droppable = "droppable" if "droppable" in columns else "1"  # layout 1: everything was droppable
            last = 0
            for query in ("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'", "SELECT MAX(id) FROM outbox"):
                with contextlib.suppress(sqlite3.Error, TypeError):
                    last = max(last, int(db.execute(query).fetchone()[0]))
            first = 1  # rows below the oldest pending one were acknowledged long ago
            with contextlib.suppress(sqlite3.Error, TypeError):
                first = int(db.execute("SELECT MIN(id) FROM outbox").fetchone()[0])
            select = f"SELECT topic, payload, qos, retain, created_at, size, {droppable} FROM outbox WHERE id = ?"
            for row_id in range(first, last + 1):  # one row at a time: a bad page loses only the rows on it
                try:
                    found = db.execute(select, (row_id,)).fetchone()
                except sqlite3.Error:
                    continue
                if found is None:
                    continue
                topic, payload, qos, retain, created_at, size, keep = found
                if isinstance(topic, str) and isinstance(payload, bytes) and qos in (1, 2):
                    rows.append((topic, payload, qos, int(bool(retain)), float(created_at), int(size), int(keep)))
    finally:
        db.close()
    return rows, counters

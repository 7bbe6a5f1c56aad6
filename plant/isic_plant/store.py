"""Writing a batch of incoming messages: one transaction, idempotent by message_id, audited.

A result or alarm already stored (a replayed copy, or a redelivery after a collector restart) is
not stored again: its `replayed_copies` grows by one per copy. Health reports are keyed by station
and time, the status by station (only a change is recorded). Rejects keep the payload and reason.
Rows are written in key order, so two collectors writing overlapping batches cannot deadlock.
"""

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import psycopg

from isic_plant import audit
from isic_plant.documents import Document, Reject, utc_text

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    """What one batch did: counts per kind, and the lots whose new results SPC must look at."""

    stored: Counter = field(default_factory=Counter)
    copies: int = 0
    rejected: int = 0
    new_results: Dict[str, List[str]] = field(default_factory=dict)  # lot_id -> message_ids stored now


# Results and alarms, stored once by message_id: (INSERT returning the keys stored now, its column values)
KEYED: Dict[str, Tuple[str, Tuple[Callable[[Document], Any], ...]]] = {
    "result": (
        "INSERT INTO results (message_id, station, sequence, lot_id, sample_id, measured_at, replayed, doc)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[],"
        " %s::timestamptz[], %s::boolean[], %s::jsonb[]) ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
        (lambda d: d.key, lambda d: d.station, lambda d: d.doc["sequence"], lambda d: d.doc["lot_id"],
         lambda d: d.doc["sample_id"], lambda d: d.doc["measured_at"], lambda d: d.doc["replayed"],
         lambda d: d.text)),
    "alarm": (
        "INSERT INTO alarms (message_id, station, raised_at, kind, severity, doc)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[], %s::jsonb[])"
        " ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
        (lambda d: d.key, lambda d: d.station, lambda d: d.doc["raised_at"], lambda d: d.doc["kind"],
         lambda d: d.doc["severity"], lambda d: d.text)),
}


def _split(items: Sequence[Union[Document, Reject]]) -> Tuple[Dict[str, Dict[str, Document]], Counter, List[Reject]]:
    by_kind: Dict[str, Dict[str, Document]] = {"result": {}, "alarm": {}, "health": {}, "status": {}}
    copies: Counter = Counter()
    rejects = []
    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
            continue
        bucket = by_kind[item.kind]
        if item.key in bucket:
            if item.kind in ("result", "alarm"):
                copies[item.key] += 1
            if item.kind != "status":
                continue
        bucket[item.key] = item  # a status: the last one in the batch wins
    return by_kind, copies, rejects


def write_batch(conn: psycopg.Connection, items: Sequence[Union[Document, Reject]]) -> BatchOutcome:
    """Store `items` in one transaction and commit; the outcome (raises on database errors: nothing is kept)."""
    by_kind, copies, rejects = _split(items)
    outcome = BatchOutcome()
    entries: List[Tuple[str, str, object]] = []
    with conn.transaction():
        for kind, (sql, columns) in KEYED.items():
            docs = [by_kind[kind][k] for k in sorted(by_kind[kind])]
            if not docs:
                continue
            stored = {row[0] for row in conn.execute(sql, [[column(d) for d in docs] for column in columns])}
            for d in docs:
                if d.key not in stored:
                    copies[d.key] += 1
                    continue
                entries.append((kind, d.key, d.doc))
                if kind == "result" and d.doc["lot_id"] is not None:
                    outcome.new_results.setdefault(d.doc["lot_id"], []).append(d.key)
            outcome.stored[kind] = len(stored)
        if copies:
            ids = sorted(copies)
            for table in ("results", "alarms"):
                conn.execute(f"UPDATE {table} SET replayed_copies = replayed_copies + c.n"  # noqa: S608 (fixed names)
                             " FROM unnest(%s::text[], %s::int[]) AS c(id, n) WHERE message_id = c.id",
                             (ids, [copies[i] for i in ids]))
            outcome.copies = sum(copies.values())
        health = [by_kind["health"][k] for k in sorted(by_kind["health"])]
        if health:
            stored_keys = {f"{station}@{utc_text(at.isoformat())}" for station, at in conn.execute(
                "INSERT INTO health_reports (station, reported_at, doc)"
                " SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::jsonb[])"
                " ON CONFLICT DO NOTHING RETURNING station, reported_at",
                ([d.station for d in health], [d.doc["reported_at"] for d in health], [d.text for d in health]))}
            entries.extend(("health", d.key, d.doc) for d in health if d.key in stored_keys)
            outcome.stored["health"] = len(stored_keys)
        statuses = [by_kind["status"][k] for k in sorted(by_kind["status"])]
        if statuses:
            changed = {row[0] for row in conn.execute(
                "INSERT INTO station_status (station, state) SELECT * FROM unnest(%s::text[], %s::text[])"
                " ON CONFLICT (station) DO UPDATE SET state = EXCLUDED.state, changed_at = clock_timestamp()"
                " WHERE station_status.state <> EXCLUDED.state RETURNING station",
                ([d.station for d in statuses], [d.doc["state"] for d in statuses]))}
            entries.extend(("status", d.key, d.doc) for d in statuses if d.key in changed)
            outcome.stored["status"] = len(changed)
        for r in rejects:  # rare: one statement each, so each id pairs with its payload
            rid = conn.execute("INSERT INTO rejects (topic, payload, reason) VALUES (%s, %s, %s) RETURNING id",
                               (r.topic, r.payload, r.reason)).fetchone()[0]
            entries.append(("reject", str(rid), {"topic": r.topic, "reason": r.reason,
                                                 "payload_sha256": hashlib.sha256(r.payload).hexdigest()}))
            log.warning("rejected a message on %s: %s", r.topic, r.reason)
        outcome.rejected = len(rejects)
        audit.append(conn, entries)
    return outcome

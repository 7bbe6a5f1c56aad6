"""SPC over the historian: after each stored batch, the new results of each lot are checked against
their lot's I-MR limits and the plant's rules; violations are stored once (their id is derived from
lot, fibre, rule and result, so two collectors finding the same one store it once) and published as
plant alarms at QoS 1, marked published only on the broker's PUBACK (unpublished ones are re-sent)."""

import json
import logging
import uuid
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional, Sequence

import psycopg

from isic_plant import spc
from isic_plant.lots import lot_fibres

log = logging.getLogger(__name__)

VIOLATION_NAMESPACE = uuid.UUID("6f1c1de4-7a53-4d38-9f2e-20b7a8c0e5a1")
PublishFn = Callable[[str, bytes], Optional[int]]  # (topic, payload) -> paho mid or None when not connected


def alarm_topic(prefix: str) -> str:
    return f"{prefix}/plant/spc/alarm"


def violation_id(lot_id: str, fibre: str, rule: str, message_id: str) -> str:
    return str(uuid.uuid5(VIOLATION_NAMESPACE, f"{lot_id}|{fibre}|{rule}|{message_id}"))


def lot_series(conn: psycopg.Connection, lot_id: str, fibre: str, limit: Optional[int] = None,
               newest: bool = False) -> List[tuple]:
    """(message_id, station, value) of a lot's results for one fibre, in measurement order."""
    order = "DESC" if newest else "ASC"
    rows = conn.execute(
        f"SELECT message_id, station, COALESCE((doc->'composition'->>%s)::float8, 0) FROM results WHERE lot_id = %s"
        f" ORDER BY measured_at {order}, message_id {order} LIMIT %s", (fibre, lot_id, limit)).fetchall()
    return rows[::-1] if newest else rows


def lot_limits(conn: psycopg.Connection, lot_id: str, fibre: str, baseline: int) -> Optional[spc.Limits]:
    """The lot's limits from its first `baseline` results (None until it has that many)."""
    values = [v for _, _, v in lot_series(conn, lot_id, fibre, limit=baseline)]
    return spc.limits(values) if len(values) >= baseline else None


class SpcMonitor:
    """Checks new results against the rules, stores violations, publishes them as plant alarms."""

    def __init__(self, rules: Sequence[str], baseline: int, prefix: str, publish: PublishFn) -> None:
        self.rules = list(rules)
        self.baseline = baseline
        self.topic = alarm_topic(prefix)
        self.publish = publish
        self._limits: Dict[tuple, spc.Limits] = {}   # (lot, fibre) -> fixed phase-I limits
        self._fibres: Dict[str, List[str]] = {}      # lot -> charted fibres
        self._in_flight: Dict[int, str] = {}         # paho mid -> violation_id

    def check(self, conn: psycopg.Connection, new_results: Dict[str, List[str]]) -> int:
        """Check the lots' new results; how many violations were stored now."""
        if not self.rules:
            return 0
        found = 0
        with conn.transaction():
            for lot_id in sorted(new_results):
                found += self._check_lot(conn, lot_id, set(new_results[lot_id]))
        return found

    def _check_lot(self, conn: psycopg.Connection, lot_id: str, new_ids: set) -> int:
        stored = 0
        if lot_id not in self._fibres:
            self._fibres[lot_id] = lot_fibres(conn, lot_id)
        for fibre in self._fibres[lot_id]:
            lim = self._limits.get((lot_id, fibre))
            if lim is None:
                lim = lot_limits(conn, lot_id, fibre, self.baseline)
                if lim is None:
                    continue
                self._limits[(lot_id, fibre)] = lim
            series = lot_series(conn, lot_id, fibre, limit=spc.window_needed(self.rules) + len(new_ids) + 1,
                                newest=True)
            new_at = [i for i, row in enumerate(series) if row[0] in new_ids]
            if not new_at:
                continue
            values = [v for _, _, v in series]
            rows = []
            for index, rule in spc.violations(values, lim, self.rules, start=new_at[0]):
                message_id, _, value = series[index]
                if message_id in new_ids:
                    rows.append((violation_id(lot_id, fibre, rule, message_id), lot_id, fibre, rule, message_id,
                                 value, lim.centre, lim.sigma))
            for row in rows:
                if conn.execute("INSERT INTO spc_violations (violation_id, lot_id, fibre, rule, message_id, value,"
                                " centre, sigma) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                                " ON CONFLICT DO NOTHING RETURNING 1", row).fetchone():
                    stored += 1
                    log.warning("SPC: lot %s %s violates %s at result %s (value %.4f, centre %.4f, sigma %.4f)",
                                lot_id, fibre, row[3], row[4], row[5], row[6], row[7])
        return stored

    def publish_pending(self, conn: psycopg.Connection) -> int:
        """Publish the violations not yet acknowledged by the broker; how many were handed to it."""
        sent = 0
        waiting = set(self._in_flight.values())
        rows = conn.execute(
            "SELECT v.violation_id, v.lot_id, v.fibre, v.rule, v.message_id, r.station, v.value, v.centre, v.sigma,"
            " v.found_at FROM spc_violations v JOIN results r USING (message_id)"
            " WHERE v.published_at IS NULL ORDER BY v.found_at LIMIT 500").fetchall()
        conn.commit()
        for vid, lot_id, fibre, rule, message_id, station, value, centre, sigma, found_at in rows:
            if vid in waiting:
                continue
            doc = {"schema_version": 1, "message_id": vid,
                   "raised_at": found_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
                   "kind": "spc_violation", "severity": "warning",
                   "message": f"lot {lot_id}: {fibre} breaks SPC rule {rule} at a result of {station} "
                              f"({value:.3f} against centre {centre:.3f}, sigma {sigma:.4f})",
                   "lot_id": lot_id, "fibre": fibre, "rule": rule, "result_message_id": message_id,
                   "station": station, "value": value, "centre": centre, "sigma": sigma}
            mid = self.publish(self.topic, json.dumps(doc).encode("utf-8"))
            if mid is not None:
                self._in_flight[mid] = vid
                sent += 1
        return sent

    def acknowledged(self, conn: psycopg.Connection, mids: Sequence[int]) -> None:
        """The broker acknowledged these publishes: their violations count as published."""
        ids = [self._in_flight.pop(m) for m in mids if m in self._in_flight]
        if ids:
            conn.execute("UPDATE spc_violations SET published_at = %s WHERE violation_id = ANY(%s)",
                         (datetime.now(timezone.utc), ids))
            conn.commit()

    def forget_in_flight(self) -> None:
        """The connection was lost: what was in flight is re-sent from the table."""
        self._in_flight.clear()

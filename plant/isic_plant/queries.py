"""The read side of the historian, shared by the pages, the API, the certificate and the exports."""

import hashlib
import math
from typing import Any, Dict, List, Optional, Tuple

import psycopg

from isic_plant import lots

Z95 = 1.959964


def results(conn: psycopg.Connection, station: Optional[str], lot_id: Optional[str],
            limit: int, offset: int = 0) -> Tuple[int, List[Dict[str, Any]]]:
    """(total matching, documents as published, newest first)."""
    where = "WHERE (%(station)s::text IS NULL OR station = %(station)s) AND (%(lot)s::text IS NULL OR lot_id = %(lot)s)"
    params = {"station": station, "lot": lot_id, "limit": limit, "offset": offset}
    total = conn.execute(f"SELECT count(*) FROM results {where}", params).fetchone()[0]
    docs = [r[0] for r in conn.execute(
        f"SELECT doc FROM results {where} ORDER BY measured_at DESC, message_id DESC LIMIT %(limit)s"
        " OFFSET %(offset)s", params)]
    return total, docs


def stations(conn: psycopg.Connection) -> List[Dict[str, Any]]:
    """Every station seen: availability, its latest health report, result and alarm, results stored and
    the sequence numbers missing between its first and last stored result (lost on the way)."""
    rows = conn.execute("""
        WITH names AS (SELECT station FROM station_status UNION SELECT DISTINCT station FROM health_reports
                       UNION SELECT DISTINCT station FROM alarms
                       UNION SELECT station FROM (SELECT DISTINCT station FROM results) r)
        SELECT n.station, s.state, s.changed_at, h.reported_at, h.doc, r.measured_at, r.doc, r.message_id,
               g.stored, g.high - g.low + 1 - g.stored, a.raised_at, a.doc
        FROM names n
        LEFT JOIN station_status s USING (station)
        LEFT JOIN LATERAL (SELECT reported_at, doc FROM health_reports h WHERE h.station = n.station
                           ORDER BY reported_at DESC LIMIT 1) h ON true
        LEFT JOIN LATERAL (SELECT measured_at, doc, message_id FROM results r WHERE r.station = n.station
                           ORDER BY measured_at DESC LIMIT 1) r ON true
        LEFT JOIN LATERAL (SELECT count(*) AS stored, min(sequence) AS low, max(sequence) AS high FROM results g
                           WHERE g.station = n.station) g ON true
        LEFT JOIN LATERAL (SELECT raised_at, doc FROM alarms a WHERE a.station = n.station
                           ORDER BY raised_at DESC LIMIT 1) a ON true
        ORDER BY n.station""").fetchall()
    # missing: sequence numbers between the first and the last stored that never arrived
    keys = ("station", "state", "state_since", "health_at", "health", "result_at", "result", "message_id",
            "stored", "missing", "alarm_at", "alarm")
    return [dict(zip(keys, r)) for r in rows]


def lot_list(conn: psycopg.Connection) -> List[Dict[str, Any]]:
    """Every lot, newest first; `out_of_spec` counts the results the station's decision rule failed (its flag)."""
    rows = conn.execute("""
        SELECT lot_id, count(*), min(measured_at), max(measured_at), array_agg(DISTINCT station),
               count(*) FILTER (WHERE doc->'flags' ? 'out_of_spec')
        FROM results WHERE lot_id IS NOT NULL GROUP BY lot_id
        UNION ALL SELECT lot_id, 0, NULL, NULL, ARRAY[]::text[], 0 FROM lots l
        WHERE NOT EXISTS (SELECT 1 FROM results r WHERE r.lot_id = l.lot_id)
        ORDER BY 4 DESC NULLS LAST, 1""").fetchall()
    keys = ("lot_id", "n", "first", "last", "stations", "out_of_spec")
    return [dict(zip(keys, r)) for r in rows]


def lot_summary(conn: psycopg.Connection, lot_id: str) -> Optional[Dict[str, Any]]:
    """Declared vs measured per fibre (mean, sd, 95 % interval of the mean, range, the results' own
    interval_95 span when they carry one), the verdict, stations, models and dates; None for an unknown lot."""
    head = conn.execute("""
        SELECT count(*), min(measured_at), max(measured_at), array_agg(DISTINCT station),
               count(*) FILTER (WHERE doc->'flags' ? 'out_of_spec'),
               count(*) FILTER (WHERE jsonb_array_length(doc->'flags') > 0)
        FROM results WHERE lot_id = %s""", (lot_id,)).fetchone()
    spec = lots.declared(conn, lot_id)
    if head[0] == 0 and spec is None:
        return None
    per_fibre = conn.execute("""
        SELECT c.key, count(*), avg(c.value::float8), stddev_samp(c.value::float8), min(c.value::float8),
               max(c.value::float8), avg((r.doc->'interval_95'->c.key->>0)::float8),
               avg((r.doc->'interval_95'->c.key->>1)::float8), count(r.doc->'interval_95'->c.key)
        FROM results r, jsonb_each_text(r.doc->'composition') c WHERE r.lot_id = %s GROUP BY c.key
        ORDER BY c.key""", (lot_id,)).fetchall()
    models = conn.execute("""
        SELECT doc->'model'->>'name', doc->'model'->>'version', doc->'model'->>'sha256', doc->>'backend', count(*)
        FROM results WHERE lot_id = %s GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC""", (lot_id,)).fetchall()
    declared = spec["composition"] if spec else {}
    tolerance = spec["tolerance_pp"] if spec else None
    fibres = []
    for key, n, mean, sd, lo, hi, ilo, ihi, n_int in per_fibre:
        if declared.get(key, 0.0) == 0.0 and hi < 0.01:
            continue  # a fibre neither declared nor found
        half = Z95 * sd / math.sqrt(n) if sd is not None and n > 1 else None
        deviation_pp = 100.0 * (mean - declared.get(key, 0.0)) if spec else None
        within = None if deviation_pp is None else abs(deviation_pp) <= tolerance
        fibres.append({"fibre": key, "declared": declared.get(key) if spec else None, "n": n, "mean": mean, "sd": sd,
                       "mean_low": None if half is None else mean - half,
                       "mean_high": None if half is None else mean + half, "min": lo, "max": hi,
                       "interval_95": [ilo, ihi] if n_int == n and n else None,
                       "deviation_pp": deviation_pp, "within_tolerance": within})
    if spec is None:
        verdict = "no spec"
    elif not fibres:
        verdict = "no results"
    else:
        verdict = "pass" if all(f["within_tolerance"] for f in fibres) else "fail"
    return {"lot_id": lot_id, "n": head[0], "first": head[1], "last": head[2], "stations": sorted(head[3] or []),
            "out_of_spec": head[4], "flagged": head[5], "spec": spec, "tolerance_pp": tolerance, "fibres": fibres,
            "verdict": verdict,
            "models": [dict(zip(("name", "version", "sha256", "backend", "n"), m)) for m in models]}


def lot_records_hash(conn: psycopg.Connection, lot_id: str) -> Tuple[int, str]:
    """(results, sha256 over 'message_id:doc_sha256' lines of the lot's audited results, by message_id):
    a certificate's fingerprint of the records behind it, recomputable from the audit trail."""
    digest = hashlib.sha256()
    count = 0
    with conn.cursor() as cur:
        cur.execute("SELECT r.message_id, a.doc_sha256 FROM results r JOIN audit_log a"
                    " ON a.kind = 'result' AND a.ref = r.message_id WHERE r.lot_id = %s ORDER BY r.message_id",
                    (lot_id,))
        for message_id, doc_sha in cur:
            digest.update(f"{message_id}:{doc_sha}\n".encode())
            count += 1
    return count, digest.hexdigest()


def audit_head(conn: psycopg.Connection) -> Tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, "")


def violations(conn: psycopg.Connection, lot_id: str, limit: int = 200) -> List[Dict[str, Any]]:
    rows = conn.execute("SELECT v.fibre, v.rule, v.message_id, r.station, r.measured_at, v.value, v.found_at,"
                        " v.published_at FROM spc_violations v JOIN results r USING (message_id)"
                        " WHERE v.lot_id = %s ORDER BY r.measured_at DESC LIMIT %s", (lot_id, limit)).fetchall()
    keys = ("fibre", "rule", "message_id", "station", "measured_at", "value", "found_at", "published_at")
    return [dict(zip(keys, r)) for r in rows]


def violation_count(conn: psycopg.Connection, lot_id: str) -> int:
    return conn.execute("SELECT count(*) FROM spc_violations WHERE lot_id = %s", (lot_id,)).fetchone()[0]


def result(conn: psycopg.Connection, message_id: str) -> Optional[Dict[str, Any]]:
    """A stored result with what the historian knows around it: copies, the health report before it."""
    row = conn.execute("SELECT doc, stored_at, replayed_copies FROM results WHERE message_id = %s",
                       (message_id,)).fetchone()
    if row is None:
        return None
    doc = row[0]
    health = conn.execute("SELECT reported_at, doc FROM health_reports WHERE station = %s"
                          " AND reported_at <= %s::timestamptz ORDER BY reported_at DESC LIMIT 1",
                          (doc["station"], doc["measured_at"])).fetchone()
    entry = conn.execute("SELECT seq, hash FROM audit_log WHERE kind = 'result' AND ref = %s",
                         (message_id,)).fetchone()
    return {"doc": doc, "stored_at": row[1], "replayed_copies": row[2],
            "health_at": health[0] if health else None, "health": health[1] if health else None,
            "audit_seq": entry[0] if entry else None, "audit_hash": entry[1] if entry else None}


def rejects(conn: psycopg.Connection, limit: int = 20) -> Tuple[int, List[Dict[str, Any]]]:
    """(how many messages were rejected, the latest ones with topic, reason and size)."""
    total = conn.execute("SELECT count(*) FROM rejects").fetchone()[0]
    rows = conn.execute("SELECT id, received_at, topic, reason, length(payload) FROM rejects"
                        " ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
    return total, [dict(zip(("id", "received_at", "topic", "reason", "bytes"), r)) for r in rows]

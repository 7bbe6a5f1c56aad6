"""The append-only, hash-chained audit trail of everything the historian stores or changes.

Each entry names a record (`kind`, `ref`: its key in its table) and the sha256 of the record's
canonical JSON; its `hash` is sha256 over the previous entry's hash and its own fields, so changing,
inserting or deleting any entry breaks every hash after it. PostgreSQL refuses UPDATE and DELETE on
the table (a trigger); someone who bypasses that is caught by `verify`, which recomputes the chain
and re-hashes the records the entries name. Appends take a transaction-scoped advisory lock, so
several collectors writing at once still form one chain.
"""

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import psycopg

AUDIT_LOCK = 0x15C_0002
GENESIS = "0" * 64

# kind -> SQL that yields (ref, content as JSON) for every record of that kind, matching `content_of` below.
RECORD_QUERIES = {
    "result": "SELECT message_id, doc FROM results",
    "alarm": "SELECT message_id, doc FROM alarms",
    "health": "SELECT station || '@' || to_char(reported_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), doc"
              " FROM health_reports",
    "reject": "SELECT id::text, jsonb_build_object('topic', topic, 'payload_sha256', encode(sha256(payload), 'hex'),"
              " 'reason', reason) FROM rejects",
    "lot": "SELECT lot_id, jsonb_build_object('lot_id', lot_id, 'composition', composition,"
           " 'tolerance_pp', tolerance_pp, 'declared_by', declared_by) FROM lots",
    "reference": "SELECT id::text, jsonb_build_object('lot_id', lot_id, 'sample_id', sample_id, 'method', method,"
                 " 'composition', composition, 'entered_by', entered_by) FROM reference_results",
}


def _normal(value: Any) -> Any:
    """Integral floats as ints: PostgreSQL gives 5.0 back as 5 from a float8 column, the same number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def canonical_json(document: Any) -> bytes:
    """The one byte form a document is hashed in: sorted keys, no spaces, UTF-8, integral floats as ints."""
    return json.dumps(_normal(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def document_sha256(document: Any) -> str:
    return hashlib.sha256(canonical_json(document)).hexdigest()


def link_hash(prev_hash: str, seq: int, kind: str, ref: str, doc_sha256: str) -> str:
    """The hash of one entry: it covers the previous entry's hash, so the entries form a chain."""
    return hashlib.sha256(f"{prev_hash}|{seq}|{kind}|{ref}|{doc_sha256}".encode()).hexdigest()


def append(conn: psycopg.Connection, entries: Sequence[Tuple[str, str, Any]]) -> None:
    """Append (kind, ref, content) entries in the caller's transaction (the lock lasts until it ends)."""
    if not entries:
        return
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
    last = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (last[0], last[1]) if last else (0, GENESIS)
    rows = []
    for kind, ref, content in entries:
        seq += 1
        digest = document_sha256(content)
        link = link_hash(prev, seq, kind, ref, digest)
        rows.append((seq, kind, ref, digest, prev, link))
        prev = link
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO audit_log (seq, kind, ref, doc_sha256, prev_hash, hash)"
                        " VALUES (%s, %s, %s, %s, %s, %s)", rows)


@dataclass
class Verdict:
    """What `verify` found: `ok`, the entries checked, and the first broken link (seq and why)."""

    entries: int = 0
    records: int = 0
    broken_seq: Optional[int] = None
    reason: str = ""
    unaudited: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken_seq is None and not self.unaudited

    def as_dict(self) -> Dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "records": self.records,
                "first_broken_seq": self.broken_seq, "reason": self.reason or None,
                "unaudited_records": self.unaudited[:20]}


def _entries(conn: psycopg.Connection) -> Iterator[Tuple[int, str, str, str, str, str]]:
    with conn.cursor(name="audit_walk") as cur:
        cur.itersize = 5000
        cur.execute("SELECT seq, kind, ref, doc_sha256, prev_hash, hash FROM audit_log ORDER BY seq")
        yield from cur


def _records(conn: psycopg.Connection, kind: str) -> Iterable[Tuple[str, Any]]:
    with conn.cursor(name=f"audit_records_{kind}") as cur:
        cur.itersize = 5000
        cur.execute(RECORD_QUERIES[kind])
        yield from cur


def verify(conn: psycopg.Connection) -> Verdict:
    """Recompute the chain, then check every record against the latest entry naming it."""
    verdict = Verdict()
    latest: Dict[Tuple[str, str], Tuple[int, str]] = {}
    prev, expected_seq = GENESIS, 1
    with conn.transaction():
        for seq, kind, ref, digest, prev_hash, stored in _entries(conn):
            verdict.entries += 1
            if seq != expected_seq:
                return _broken(verdict, expected_seq, f"entry {expected_seq} is missing (next entry is {seq})")
            if prev_hash != prev:
                return _broken(verdict, seq, "its prev_hash is not the previous entry's hash")
            if link_hash(prev, seq, kind, ref, digest) != stored:
                return _broken(verdict, seq, "its hash does not match its fields (the entry was altered)")
            latest[(kind, ref)] = (seq, digest)
            prev, expected_seq = stored, seq + 1
        first_bad: Optional[Tuple[int, str]] = None
        seen = set()
        for kind in RECORD_QUERIES:
            for ref, content in _records(conn, kind):
                verdict.records += 1
                key = (kind, ref)
                seen.add(key)
                if key not in latest:
                    verdict.unaudited.append(f"{kind} {ref}")
                    continue
                seq, digest = latest[key]
                if document_sha256(content) != digest and (first_bad is None or seq < first_bad[0]):
                    first_bad = (seq, f"the {kind} {ref} no longer matches what was recorded (it was altered)")
        for (kind, ref), (seq, _) in latest.items():
            if kind in RECORD_QUERIES and (kind, ref) not in seen and (first_bad is None or seq < first_bad[0]):
                first_bad = (seq, f"the {kind} {ref} it records is gone (deleted)")
        if first_bad is not None:
            return _broken(verdict, *first_bad)
    return verdict


def _broken(verdict: Verdict, seq: int, reason: str) -> Verdict:
    verdict.broken_seq = seq
    verdict.reason = reason
    return verdict

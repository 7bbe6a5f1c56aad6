"""A lot for a LIMS: CSV (one row per result, one column per fibre) or JSON (the documents as published)."""

import csv
import io
from typing import Any, Dict, Iterable, Iterator, List

import psycopg

FIXED = ["message_id", "station", "sequence", "measured_at", "sample_id", "lot_id", "blend", "confidence",
         "in_spec", "verdict", "flags", "model_name", "model_version", "model_sha256", "backend", "replayed",
         "replayed_copies"]


def lot_documents(conn: psycopg.Connection, lot_id: str) -> Iterator[tuple]:
    """(document, replayed_copies) of a lot's results in measurement order, streamed."""
    with conn.transaction(), conn.cursor(name="lot_export") as cur:
        cur.itersize = 2000
        cur.execute("SELECT doc, replayed_copies FROM results WHERE lot_id = %s ORDER BY measured_at, message_id",
                    (lot_id,))
        yield from cur


def lot_fibre_names(conn: psycopg.Connection, lot_id: str) -> List[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT jsonb_object_keys(doc->'composition') FROM results"
                                       " WHERE lot_id = %s ORDER BY 1", (lot_id,))]


def csv_text(rows: Iterable[tuple], fibres: List[str]) -> str:
    """The CSV of (document, replayed_copies) rows: composition_<fibre> and uncertainty_<fibre> per fibre."""
    out = io.StringIO()
    columns = FIXED + [f"composition_{f}" for f in fibres] + [f"uncertainty_{f}" for f in fibres]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for doc, copies in rows:
        spec = doc.get("spec") or {}
        row: Dict[str, Any] = {
            "message_id": doc["message_id"], "station": doc["station"], "sequence": doc["sequence"],
            "measured_at": doc["measured_at"], "sample_id": doc["sample_id"], "lot_id": doc["lot_id"],
            "blend": doc["blend"], "confidence": doc["confidence"], "in_spec": spec.get("in_spec", ""),
            "verdict": spec.get("verdict", ""), "flags": " ".join(doc["flags"]), "model_name": doc["model"]["name"],
            "model_version": doc["model"]["version"], "model_sha256": doc["model"]["sha256"],
            "backend": doc["backend"], "replayed": doc["replayed"], "replayed_copies": copies}
        for f in fibres:
            row[f"composition_{f}"] = doc["composition"].get(f, "")
            row[f"uncertainty_{f}"] = doc["uncertainty"].get(f, "")
        writer.writerow(row)
    return out.getvalue()

"""Lots: declared at the plant (audited), or known from the spec the stations checked against."""

from typing import Any, Dict, List, Optional

import psycopg
from psycopg.types.json import Jsonb

from isic_plant import audit
from isic_plant.compositions import check_composition


def declare_lot(conn: psycopg.Connection, lot_id: str, composition: Dict[str, float], tolerance_pp: float,
                declared_by: str) -> None:
    """Declare (or re-declare) a lot's composition and tolerance; audited in the same transaction."""
    composition = check_composition(composition)
    with conn.transaction():
        conn.execute("INSERT INTO lots (lot_id, composition, tolerance_pp, declared_by) VALUES (%s, %s, %s, %s)"
                     " ON CONFLICT (lot_id) DO UPDATE SET composition = EXCLUDED.composition,"
                     " tolerance_pp = EXCLUDED.tolerance_pp, declared_by = EXCLUDED.declared_by,"
                     " declared_at = clock_timestamp()",
                     (lot_id, Jsonb(composition), float(tolerance_pp), declared_by))
        audit.append(conn, [("lot", lot_id, {"lot_id": lot_id, "composition": composition,
                                             "tolerance_pp": float(tolerance_pp), "declared_by": declared_by})])


def declared(conn: psycopg.Connection, lot_id: str) -> Optional[Dict[str, Any]]:
    """The lot's declared composition and tolerance: the plant's declaration, else the stations' spec."""
    row = conn.execute("SELECT composition, tolerance_pp FROM lots WHERE lot_id = %s", (lot_id,)).fetchone()
    if row:
        return {"composition": row[0], "tolerance_pp": row[1], "source": "plant"}
    row = conn.execute("SELECT doc->'spec' FROM results WHERE lot_id = %s AND doc->'spec' <> 'null'::jsonb"
                       " ORDER BY measured_at LIMIT 1", (lot_id,)).fetchone()
    if row and row[0]:
        spec = row[0]
        first = conn.execute("SELECT doc->'composition' FROM results WHERE lot_id = %s ORDER BY measured_at LIMIT 1",
                             (lot_id,)).fetchone()[0]
        # the station's spec stores measured - declared in percentage points
        composition = {f: round(first[f] - spec["deviation_pp"][f] / 100.0, 6) for f in spec["deviation_pp"]}
        return {"composition": composition, "tolerance_pp": spec["tolerance_pp"], "source": "station"}
    return None


def lot_fibres(conn: psycopg.Connection, lot_id: str) -> List[str]:
    """The fibres charted for a lot: those it declares, else every fibre its first result reports."""
    spec = declared(conn, lot_id)
    if spec:
        return sorted(f for f, v in spec["composition"].items() if v > 0)
    row = conn.execute("SELECT doc->'composition' FROM results WHERE lot_id = %s ORDER BY measured_at LIMIT 1",
                       (lot_id,)).fetchone()
    return sorted(row[0]) if row else []

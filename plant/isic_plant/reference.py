"""Lab cross-checks: dissolution results (ISO 1833) entered by the lab, and each station's bias
against them per blend.

A reference names a lot and a sample; every station result of that sample is compared with it,
fibre by fibre: bias = mean(measured - lab), spread = standard deviation of those differences.
A station is flagged when |bias| exceeds its stated expanded uncertainty: the half width of the
results' `interval_95` where they carry one, else `coverage_factor` x their stated standard
uncertainty (`uncertainty`, root mean square over the results).
"""

import math
from collections import defaultdict
from typing import Any, Dict, List, Optional

import psycopg
from psycopg.types.json import Jsonb

from isic_plant import audit
from isic_plant.compositions import check_composition


def add_reference(conn: psycopg.Connection, lot_id: str, sample_id: str, method: str,
                  composition: Dict[str, float], entered_by: str) -> int:
    """Record one dissolution result; its id. Audited in the same transaction."""
    composition = check_composition(composition)
    with conn.transaction():
        rid = conn.execute("INSERT INTO reference_results (lot_id, sample_id, method, composition, entered_by)"
                           " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                           (lot_id, sample_id, method, Jsonb(composition), entered_by)).fetchone()[0]
        audit.append(conn, [("reference", str(rid), {"lot_id": lot_id, "sample_id": sample_id, "method": method,
                                                     "composition": composition, "entered_by": entered_by})])
    return rid


def blend_of(composition: Dict[str, float]) -> str:
    """The blend a lab composition names: its fibres present (>= 1 %), alphabetically, joined by '/'."""
    return "/".join(sorted(f for f, v in composition.items() if v >= 0.01))


def references(conn: psycopg.Connection, lot_id: Optional[str] = None) -> List[Dict[str, Any]]:
    rows = conn.execute("SELECT id, lot_id, sample_id, method, composition, entered_at, entered_by"
                        " FROM reference_results WHERE %(lot)s::text IS NULL OR lot_id = %(lot)s ORDER BY id",
                        {"lot": lot_id}).fetchall()
    keys = ("id", "lot_id", "sample_id", "method", "composition", "entered_at", "entered_by")
    return [dict(zip(keys, r)) for r in rows]


def bias_report(conn: psycopg.Connection, coverage_factor: float = 2.0,
                lot_id: Optional[str] = None) -> List[Dict[str, Any]]:
    """Per station, blend and fibre: n, bias, spread, stated expanded uncertainty and the flag."""
    rows = conn.execute(
        "SELECT r.station, ref.composition, r.doc FROM reference_results ref"
        " JOIN results r ON r.lot_id = ref.lot_id AND r.sample_id = ref.sample_id"
        " WHERE %(lot)s::text IS NULL OR ref.lot_id = %(lot)s ORDER BY r.station, r.measured_at",
        {"lot": lot_id}).fetchall()
    groups: Dict[tuple, Dict[str, list]] = defaultdict(lambda: {"diff": [], "u": [], "half": []})
    for station, lab, doc in rows:
        blend = blend_of(lab)
        for fibre in sorted(set(lab) | {f for f, v in doc["composition"].items() if v >= 0.01}):
            group = groups[(station, blend, fibre)]
            group["diff"].append(doc["composition"].get(fibre, 0.0) - lab.get(fibre, 0.0))
            group["u"].append(doc.get("uncertainty", {}).get(fibre, 0.0))
            interval = (doc.get("interval_95") or {}).get(fibre)
            if interval:
                group["half"].append((interval[1] - interval[0]) / 2.0)
    report = []
    for (station, blend, fibre), g in sorted(groups.items()):
        n = len(g["diff"])
        bias = sum(g["diff"]) / n
        spread = math.sqrt(sum((d - bias) ** 2 for d in g["diff"]) / (n - 1)) if n > 1 else None
        u = math.sqrt(sum(x * x for x in g["u"]) / n)
        if len(g["half"]) == n:
            expanded, basis = sum(g["half"]) / n, "interval_95"
        else:
            expanded, basis = coverage_factor * u, f"{coverage_factor:g} x uncertainty"
        report.append({"station": station, "blend": blend, "fibre": fibre, "n": n, "bias": bias, "spread": spread,
                       "stated_uncertainty": u, "expanded_uncertainty": expanded, "basis": basis,
                       "flagged": abs(bias) > expanded})
    return report

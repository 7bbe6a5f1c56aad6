"""A lot's certificate of analysis (PDF, fpdf2): declared vs measured per fibre with intervals,
the verdict, the method, stations, models and dates, the lab cross-checks, SPC, and a hash of the
records behind it (recomputable from the audit trail: `queries.lot_records_hash`)."""

from datetime import datetime, timezone
from typing import Any, List, Optional

import psycopg
from fpdf import FPDF
from fpdf.enums import XPos, YPos

from isic_plant import __version__, queries
from isic_plant.reference import bias_report, references

METHOD = ("Near-infrared spectroscopy and microscopy, fibre composition by the ISiC-Net model on ISiC "
          "stations (non-destructive); lab cross-checks by chemical dissolution where listed.")


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100.0 * value:.1f} %"


def _when(moment: Optional[datetime]) -> str:
    return "-" if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _latin1(text: str) -> str:
    """The core PDF fonts hold Latin-1 only."""
    return text.encode("latin-1", "replace").decode("latin-1")


class _Certificate(FPDF):
    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=7)
        self.cell(0, 5, f"isic-plant {__version__} - page {self.page_no()}/{{nb}}", align="C")


def certificate_pdf(conn: psycopg.Connection, lot_id: str, coverage_factor: float = 2.0) -> Optional[bytes]:
    """The PDF bytes, or None for a lot the historian does not know."""
    summary = queries.lot_summary(conn, lot_id)
    if summary is None:
        return None
    n_hashed, records_hash = queries.lot_records_hash(conn, lot_id)
    head_seq, head_hash = queries.audit_head(conn)
    refs = references(conn, lot_id)
    bias = bias_report(conn, coverage_factor, lot_id)
    n_violations = queries.violation_count(conn, lot_id)

    pdf = _Certificate(format="A4")
    pdf.alias_nb_pages()
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "Certificate of analysis", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=10)
    _lines(pdf, [
        f"Lot: {lot_id}",
        f"Verdict: {summary['verdict'].upper()}"
        + (f" (every fibre's mean within +/- {summary['tolerance_pp']:g} percentage points of the declared)"
           if summary["spec"] else ""),
        f"Issued: {_when(datetime.now(timezone.utc))}",
        f"Results: {summary['n']} measured {_when(summary['first'])} to {_when(summary['last'])}; "
        f"{summary['out_of_spec']} out of spec, {summary['flagged']} with quality flags",
        f"Stations: {', '.join(summary['stations']) or '-'}",
    ])
    _heading(pdf, "Declared and measured composition")
    rows = [["Fibre", "Declared", "Measured mean", "95 % interval of the mean", "Results' interval_95", "Range",
             "Deviation"]]
    for f in summary["fibres"]:
        interval = f"{_pct(f['mean_low'])} - {_pct(f['mean_high'])}" if f["mean_low"] is not None else "-"
        own = f"{_pct(f['interval_95'][0])} - {_pct(f['interval_95'][1])}" if f["interval_95"] else "not carried"
        dev = "-" if f["deviation_pp"] is None else f"{f['deviation_pp']:+.1f} pp"
        rows.append([f["fibre"], _pct(f["declared"]), _pct(f["mean"]), interval, own,
                     f"{_pct(f['min'])} - {_pct(f['max'])}", dev])
    _table(pdf, rows, (22, 20, 26, 38, 32, 32, 20))
    _heading(pdf, "Method")
    _lines(pdf, [METHOD])
    _heading(pdf, "Models")
    _table(pdf, [["Model", "Version", "Backend", "Results", "Graph sha256"]]
           + [[m["name"], m["version"], m["backend"], str(m["n"]), m["sha256"][:32] + "..."]
              for m in summary["models"]],
           (30, 22, 26, 18, 94))
    _heading(pdf, "Lab cross-checks (dissolution)")
    if refs:
        _table(pdf, [["Sample", "Method", "Composition", "Entered"]]
               + [[r["sample_id"], r["method"],
                   ", ".join(f"{k} {_pct(v)}" for k, v in sorted(r["composition"].items())), _when(r["entered_at"])]
                  for r in refs], (26, 34, 80, 50))
        _table(pdf, [["Station", "Blend", "Fibre", "n", "Bias", "Spread", "Stated U", "Flag"]]
               + [[b["station"], b["blend"], b["fibre"], str(b["n"]), f"{100 * b['bias']:+.2f} pp",
                   "-" if b["spread"] is None else f"{100 * b['spread']:.2f} pp",
                   f"{100 * b['expanded_uncertainty']:.2f} pp", "BIAS > U" if b["flagged"] else "ok"] for b in bias],
               (34, 34, 22, 12, 22, 22, 22, 22))
    else:
        _lines(pdf, ["No dissolution result was entered for this lot."])
    _heading(pdf, "Statistical process control")
    _lines(pdf, [f"{n_violations} rule violation(s) recorded on this lot's I-MR charts."])
    _heading(pdf, "Records")
    pdf.set_font("Courier", size=8)
    _lines(pdf, [f"sha256 over {n_hashed} audited results: {records_hash}",
                 f"audit chain head at issue: entry {head_seq}, {head_hash}"])
    return bytes(pdf.output())


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=9)


def _lines(pdf: FPDF, lines: List[str]) -> None:
    for line in lines:
        pdf.multi_cell(0, 5, _latin1(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _table(pdf: FPDF, rows: List[List[Any]], widths: tuple) -> None:
    pdf.set_font("Helvetica", size=8)
    with pdf.table(col_widths=widths, text_align="LEFT", line_height=5, first_row_as_headings=True) as table:
        for values in rows:
            row = table.row()
            for value in values:
                row.cell(_latin1(str(value)))
    pdf.set_font("Helvetica", size=9)
    pdf.ln(2)

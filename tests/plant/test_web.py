"""The web service on a real uvicorn over a real PostgreSQL: the API as the issue spells it, the pages
in Debian's chromium (playwright, no browser download), the certificate read back with pdftotext and pypdf."""

import csv
import io
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from typing import Any, Iterator, Tuple

import psycopg
import pypdf
import pytest

from isic_plant import queries
from isic_plant.config import PlantConfig
from isic_plant.documents import parse
from isic_plant.lots import declare_lot
from isic_plant.simulated import SimulatedStation
from isic_plant.spc_monitor import SpcMonitor
from isic_plant.store import write_batch
from isic_plant.web import BackgroundServer, create_app
from isic_station.messaging.results import build_alarm

CHROMIUM = "/usr/bin/chromium"


def _get(url: str) -> Tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _post(url: str, body: Any) -> Tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def historian(plant_db: str) -> Iterator[Tuple[str, dict]]:
    """A served historian with two stations on lot L-100 (one drifting at the end) and one on L-200."""
    a = SimulatedStation("line1-st1", "L-100", {"cotton": 0.62, "polyester": 0.38}, seed=1)
    b = SimulatedStation("line1-st2", "L-100", {"cotton": 0.62, "polyester": 0.38}, seed=2)
    c = SimulatedStation("line2-st1", "L-200", {"cotton": 0.5, "linen": 0.5}, seed=3)
    docs = []
    for i in range(30):
        docs.append(a.result(f"S{i % 5}", shift={"cotton": 0.2} if i == 29 else None))
        docs.append(b.result(f"S{i % 5}"))
        docs.append(c.result())
    items = [parse(f"isic/{d['station']}/result", json.dumps(d).encode(), "isic") for d in docs]
    items.append(parse("isic/line1-st1/status", b'{"state": "online", "station": "line1-st1"}', "isic"))
    alarm = build_alarm(station="line2-st1", kind="device_fault", severity="critical", message="camera unplugged")
    items.append(parse("isic/line2-st1/alarm", json.dumps(alarm).encode(), "isic"))
    items.append(parse("isic/line2-st1/result", b"{not json", "isic"))
    with psycopg.connect(plant_db) as conn:
        declare_lot(conn, "L-100", {"cotton": 0.62, "polyester": 0.38}, 5.0, "qa")
        outcome = write_batch(conn, items)
        SpcMonitor(("we1", "we2", "we3", "we4"), 20, "isic", lambda t, p: None).check(conn, outcome.new_results)
    with BackgroundServer(create_app(plant_db, PlantConfig(dsn=plant_db))) as server:
        yield server.url, {"docs": docs, "drifted": docs[-3]["message_id"]}


def test_api_results_is_total_and_documents_as_published(historian):
    url, data = historian
    status, body, kind = _get(f"{url}/api/results?station=line1-st1&lot=L-100&limit=5")
    assert status == 200 and kind.startswith("application/json")
    answer = json.loads(body)
    assert set(answer) == {"total", "results"} and answer["total"] == 30 and len(answer["results"]) == 5
    published = {d["message_id"]: json.loads(json.dumps(d)) for d in data["docs"]}
    for doc in answer["results"]:
        assert doc == published[doc["message_id"]]
        assert doc["station"] == "line1-st1" and doc["lot_id"] == "L-100"
    assert json.loads(_get(f"{url}/api/results")[1])["total"] == 90
    status, body, _ = _get(f"{url}/api/results?limit=0")
    assert status == 400 and "limit=0 is outside" in json.loads(body)["error"]


def test_api_reference_add_and_bias(historian):
    url, _ = historian
    status, body = _post(f"{url}/api/references", {"lot_id": "L-100", "sample_id": "S1", "method": "ISO 1833-11",
                                                   "composition": {"cotton": 0.62, "polyester": 0.38}})
    assert status == 201 and body["id"] == 1
    status, body = _post(f"{url}/api/references", {"lot_id": "L-100", "sample_id": "S1", "method": "ISO 1833-11",
                                                   "composition": {"cotton": 0.62, "polyester": 0.48}})
    assert status == 400 and "sums to 1.100" in body["error"]
    bias = json.loads(_get(f"{url}/api/bias?lot=L-100")[1])
    assert {(b["station"], b["fibre"]) for b in bias} >= {("line1-st1", "cotton"), ("line1-st2", "polyester")}
    assert all(b["n"] == 6 for b in bias)


def test_lot_exports_for_a_lims(historian):
    url, data = historian
    status, body, kind = _get(f"{url}/lots/L-100/export.csv")
    assert status == 200 and kind.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 60 and {r["station"] for r in rows} == {"line1-st1", "line1-st2"}
    first = next(r for r in rows if r["message_id"] == data["docs"][0]["message_id"])
    assert float(first["composition_cotton"]) == pytest.approx(data["docs"][0]["composition"]["cotton"])
    exported = json.loads(_get(f"{url}/lots/L-100/export.json")[1])
    assert len(exported["results"]) == 60 and exported["lot"]["verdict"] in ("pass", "fail")
    assert _get(f"{url}/lots/NOPE/export.json")[0] == 404


def test_certificate_reads_back_with_pdf_tools(historian, plant_db):
    url, data = historian
    status, pdf, kind = _get(f"{url}/lots/L-100/certificate.pdf")
    assert status == 200 and kind == "application/pdf" and pdf.startswith(b"%PDF")
    text = "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    with psycopg.connect(plant_db) as conn:
        n, digest = queries.lot_records_hash(conn, "L-100")
        summary = queries.lot_summary(conn, "L-100")
    assert n == 60 and digest in text
    # "out of spec" counts what the stations' decision rule failed (their `out_of_spec` flag): the drifted result
    failed = sum("out_of_spec" in d["flags"] for d in data["docs"] if d["lot_id"] == "L-100")
    assert failed >= 1 and summary["out_of_spec"] == failed
    assert f"{failed} out of spec" in text
    assert "Certificate of analysis" in text and "Lot: L-100" in text
    assert f"Verdict: {summary['verdict'].upper()}" in text
    assert "line1-st1, line1-st2" in text and "isic-net" in text
    cotton = next(f for f in summary["fibres"] if f["fibre"] == "cotton")
    assert f"{100 * cotton['mean']:.1f} %" in text and "62.0 %" in text
    if shutil.which("pdftotext"):
        layout = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True).stdout
        assert b"Certificate of analysis" in layout and digest.encode() in layout
    assert _get(f"{url}/lots/NOPE/certificate.pdf")[0] == 404


def test_pages_in_a_real_browser(historian):
    from playwright.sync_api import sync_playwright

    url, data = historian
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/stations")
            rows = page.locator("#stations tr[data-station]")
            assert rows.count() == 3
            assert "online" in page.locator("tr[data-station='line1-st1']").inner_text()
            cells = page.locator("tr[data-station='line2-st1'] td")
            assert cells.nth(9).inner_text() == "30" and cells.nth(10).inner_text() == "0"  # stored, no gaps
            assert "device_fault" in cells.nth(11).inner_text() and "camera unplugged" in cells.nth(11).inner_text()
            assert page.locator("#rejected").inner_text().startswith("1 message")
            assert "not UTF-8 JSON" in page.locator("#rejects").inner_text()
            page.click("text=L-100")
            assert page.url.endswith("/lots/L-100")
            assert page.locator("#count").inner_text() == "60"
            assert page.locator("#verdict").inner_text() in ("pass", "fail")
            charts = page.locator("img.chart")
            assert charts.count() == 2
            page.wait_for_load_state("networkidle")
            widths = page.eval_on_selector_all("img.chart", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
            assert all(w and w > 100 for w in widths), widths  # the SVG charts were drawn and loaded
            assert "we1" in page.locator("#violations").inner_text()
            page.click(f"#violations a[href='/results/{data['drifted']}']")
            assert "isic-net sim" in page.locator("#model").inner_text()
            shown = json.loads(page.locator("#document").inner_text())
            assert shown["message_id"] == data["drifted"]
            page.goto(f"{url}/lots/NOPE")
            assert "no lot NOPE" in page.content()
            assert not errors
        finally:
            browser.close()


def test_a_station_sequence_gap_is_counted(plant_db):
    station = SimulatedStation("gap-st", None, {"cotton": 1.0})
    docs = [station.result() for _ in range(5)]
    items = [parse("isic/gap-st/result", json.dumps(d).encode(), "isic") for d in docs if d["sequence"] != 3]
    with psycopg.connect(plant_db) as conn:
        write_batch(conn, items)
        row = next(s for s in queries.stations(conn) if s["station"] == "gap-st")
    assert row["stored"] == 4 and row["missing"] == 1

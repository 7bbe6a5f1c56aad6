"""`isic-plant bench pages`: first-byte times of the web pages for a lot of N results, and the
certificate's and the exports' full times, against a real uvicorn and a scratch PostgreSQL database.

First byte = from sending the request to the first body byte (http.client on the same host). The
chart's first request draws it (matplotlib); later ones come from the cache until the lot grows.
"""

import http.client
import json
import logging
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import psycopg

from isic_plant import db
from isic_plant.config import PlantConfig
from isic_plant.documents import parse
from isic_plant.lots import declare_lot
from isic_plant.simulated import SimulatedStation
from isic_plant.spc_monitor import SpcMonitor
from isic_plant.store import write_batch
from isic_plant.web import BackgroundServer, create_app

LOT = "L-PAGES"


def _fill(dsn: str, results: int, stations: int = 10) -> str:
    fleet = [SimulatedStation(f"page-st{i:02d}", LOT, {"cotton": 0.62, "polyester": 0.38}, seed=i)
             for i in range(stations)]
    first = ""
    logging.getLogger("isic_plant.spc_monitor").setLevel(logging.ERROR)  # iid noise trips we4 now and then
    with psycopg.connect(dsn) as conn:
        declare_lot(conn, LOT, {"cotton": 0.62, "polyester": 0.38}, 5.0, "bench")
        monitor = SpcMonitor(("we1", "we2", "we3", "we4"), 20, "bench", lambda topic, payload: None)
        for start in range(0, results, 1000):
            items = []
            for i in range(start, min(results, start + 1000)):
                st = fleet[i % stations]
                doc = st.result(f"S{i // 50}")
                items.append(parse(f"isic/{st.station_id}/result", json.dumps(doc).encode(), "isic"))
            first = first or items[0].key
            monitor.check(conn, write_batch(conn, items).new_results)
    return first


def _timed(host: str, port: int, path: str) -> Dict[str, float]:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    t0 = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    response.read(1)
    first = time.perf_counter() - t0
    response.read()
    total = time.perf_counter() - t0
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path} answered {response.status}")
    return {"first_byte": first, "total": total}


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_pages_bench(results: int = 10000, requests: int = 40, dsn: Optional[str] = None,
                    progress: bool = True) -> Dict[str, Any]:
    say = (lambda text: print(f"bench: {text}", file=sys.stderr, flush=True)) if progress else (lambda text: None)
    with db.scratch_database(dsn or db.SERVER_DSN, "isic_plant_pages") as bench_dsn:
        db.migrate(bench_dsn)
        t0 = time.perf_counter()
        message_id = _fill(bench_dsn, results)
        say(f"stored a lot of {results} results in {time.perf_counter() - t0:.1f} s")
        with psycopg.connect(bench_dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        figures: Dict[str, Any] = {"results_in_lot": results, "requests_per_page": requests}
        with BackgroundServer(create_app(bench_dsn, PlantConfig(dsn=bench_dsn))) as web:
            host, port = web.url.split("//")[1].split(":")
            port = int(port)
            chart = f"/lots/{LOT}/chart/cotton.svg"
            first_chart = _timed(host, port, chart)
            figures["chart_first_draw_s"] = round(first_chart["total"], 3)
            pages = {"stations": "/stations", "lots": "/lots", "lot": f"/lots/{LOT}",
                     "result": f"/results/{message_id}", "api_results": f"/api/results?lot={LOT}&limit=100",
                     "chart_cached": chart}
            for label, path in pages.items():
                _timed(host, port, path)  # warm
                times = [_timed(host, port, path)["first_byte"] for _ in range(requests)]
                figures[f"{label}_first_byte_ms_p50"] = round(1000 * statistics.median(times), 1)
                figures[f"{label}_first_byte_ms_p95"] = round(1000 * _quantile(times, 0.95), 1)
                say(f"{path}: p50 {figures[f'{label}_first_byte_ms_p50']} ms, "
                    f"p95 {figures[f'{label}_first_byte_ms_p95']} ms")
            for label, path in (("certificate", f"/lots/{LOT}/certificate.pdf"),
                                ("export_csv", f"/lots/{LOT}/export.csv"), ("export_json", f"/lots/{LOT}/export.json")):
                times = [_timed(host, port, path)["total"] for _ in range(max(3, requests // 8))]
                figures[f"{label}_s_median"] = round(statistics.median(times), 3)
                figures[f"{label}_s_max"] = round(max(times), 3)
                say(f"{path}: median {figures[f'{label}_s_median']} s")
        return figures

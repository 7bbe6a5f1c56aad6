"""`isic-plant serve`: pages for stations, lots and results, the JSON API, lot certificates and exports.

Starlette with Jinja2 templates; every handler is synchronous, so Starlette runs it on its thread
pool with a connection from a psycopg pool. Charts are separate SVG requests (`/lots/<id>/chart/<fibre>.svg`),
so a page's first byte does not wait for matplotlib; the stylesheet is shipped in `static/`.

API: `GET /api/results?station=ID&lot=ID&limit=N` -> {"total": int, "results": [documents as published]}
(newest first; `offset` pages on), `GET /api/lots/<id>`, `GET /api/references?lot=ID`, `GET /api/bias?lot=ID`,
`POST /api/references` {lot_id, sample_id, method, composition, entered_by?} and
`POST /api/lots` {lot_id, composition, tolerance_pp?, declared_by?}.
"""

import contextlib
import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Optional, Tuple

from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from isic_plant import charts, export, lots, queries, spc
from isic_plant.certificate import certificate_pdf
from isic_plant.config import PlantConfig
from isic_plant.errors import PlantError
from isic_plant.reference import add_reference, bias_report, references
from isic_plant.spc_monitor import lot_limits, lot_series

HERE = Path(__file__).resolve().parent
MAX_LIMIT = 10000
PAGE_RESULTS = 100


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=_json_default), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> Tuple[Optional[int], str]:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default, ""
    try:
        value = int(raw)
    except ValueError:
        return None, f"{name}={raw!r} is not an integer"
    if not low <= value <= high:
        return None, f"{name}={value} is outside {low}..{high}"
    return value, ""


def create_app(dsn: str, cfg: Optional[PlantConfig] = None) -> Starlette:
    """The web application over the historian at `dsn` (the schema must be migrated)."""
    cfg = cfg or PlantConfig()
    pool = ConnectionPool(dsn, min_size=1, max_size=8, open=False, kwargs={"autocommit": True})
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pct"] = lambda v: "-" if v is None else f"{100.0 * v:.1f} %"
    templates.env.filters["when"] = lambda v: "-" if v is None else (
        v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, datetime) else str(v))
    templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=_json_default)
    svg_cache: Dict[Tuple[str, str, int], bytes] = {}

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def index(request: Request) -> Response:
        return RedirectResponse("/stations", status_code=302)

    def stations_page(request: Request) -> Response:
        with pool.connection() as conn:
            rejected, latest_rejects = queries.rejects(conn)
            return page(request, "stations.html", stations=queries.stations(conn), rejected=rejected,
                        rejects=latest_rejects)

    def lots_page(request: Request) -> Response:
        with pool.connection() as conn:
            return page(request, "lots.html", lots=queries.lot_list(conn))

    def lot_page(request: Request) -> Response:
        lot_id = request.path_params["lot_id"]
        with pool.connection() as conn:
            summary = queries.lot_summary(conn, lot_id)
            if summary is None:
                return page(request, "missing.html", status=404, what=f"lot {lot_id}")
            _, recent = queries.results(conn, None, lot_id, PAGE_RESULTS)
            return page(request, "lot.html", lot=summary, recent=recent, violations=queries.violations(conn, lot_id),
                        references=references(conn, lot_id), bias=bias_report(conn, cfg.coverage_factor, lot_id),
                        fibres=lots.lot_fibres(conn, lot_id), rules=cfg.spc_rules)

    def lot_chart(request: Request) -> Response:
        lot_id, fibre = request.path_params["lot_id"], request.path_params["fibre"]
        with pool.connection() as conn:
            series = lot_series(conn, lot_id, fibre)
            if not series:
                return Response("no such lot or fibre", status_code=404)
            key = (lot_id, fibre, len(series))
            if key not in svg_cache:
                lim = lot_limits(conn, lot_id, fibre, cfg.spc_baseline) or spc.limits([v for _, _, v in series])
                flagged_ids = {r[0] for r in conn.execute(
                    "SELECT message_id FROM spc_violations WHERE lot_id = %s AND fibre = %s", (lot_id, fibre))}
                spec = lots.declared(conn, lot_id)
                svg_cache[key] = charts.imr_svg(
                    f"Lot {lot_id}: {fibre} (I-MR, limits from the first {cfg.spc_baseline} results)",
                    [v for _, _, v in series], lim, {i for i, row in enumerate(series) if row[0] in flagged_ids},
                    declared=spec["composition"].get(fibre) if spec else None,
                    tolerance=spec["tolerance_pp"] if spec else None)
        return Response(svg_cache[key], media_type="image/svg+xml", headers={"Cache-Control": "max-age=10"})

    def result_page(request: Request) -> Response:
        with pool.connection() as conn:
            found = queries.result(conn, request.path_params["message_id"])
        if found is None:
            return page(request, "missing.html", status=404, what=f"result {request.path_params['message_id']}")
        return page(request, "result.html", r=found, doc=found["doc"])

    def certificate(request: Request) -> Response:
        lot_id = request.path_params["lot_id"]
        with pool.connection() as conn:
            pdf = certificate_pdf(conn, lot_id, cfg.coverage_factor)
        if pdf is None:
            return Response(f"lot {lot_id} is unknown", status_code=404)
        return Response(pdf, media_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="certificate-{lot_id}.pdf"'})

    def export_csv(request: Request) -> Response:
        lot_id = request.path_params["lot_id"]
        with pool.connection() as conn:
            text = export.csv_text(export.lot_documents(conn, lot_id), export.lot_fibre_names(conn, lot_id))
        return Response(text, media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="lot-{lot_id}.csv"'})

    def export_json(request: Request) -> Response:
        lot_id = request.path_params["lot_id"]
        with pool.connection() as conn:
            summary = queries.lot_summary(conn, lot_id)
            if summary is None:
                return _error(404, f"lot {lot_id} is unknown")
            docs = [doc for doc, _ in export.lot_documents(conn, lot_id)]
            _, records_hash = queries.lot_records_hash(conn, lot_id)
        return _json({"lot": summary, "records_sha256": records_hash, "results": docs})

    def api_results(request: Request) -> Response:
        limit, problem = _int_param(request, "limit", 100, 1, MAX_LIMIT)
        offset, problem2 = _int_param(request, "offset", 0, 0, 10**9)
        if problem or problem2:
            return _error(400, problem or problem2)
        with pool.connection() as conn:
            total, docs = queries.results(conn, request.query_params.get("station") or None,
                                          request.query_params.get("lot") or None, limit, offset)
        return _json({"total": total, "results": docs})

    def api_lot(request: Request) -> Response:
        with pool.connection() as conn:
            summary = queries.lot_summary(conn, request.path_params["lot_id"])
        return _json(summary) if summary else _error(404, "unknown lot")

    def api_references(request: Request) -> Response:
        with pool.connection() as conn:
            return _json(references(conn, request.query_params.get("lot") or None))

    def api_bias(request: Request) -> Response:
        with pool.connection() as conn:
            return _json(bias_report(conn, cfg.coverage_factor, request.query_params.get("lot") or None))

    async def api_add_reference(request: Request) -> Response:
        body, problem = await _body(request, ("lot_id", "sample_id", "method", "composition"))
        if problem:
            return _error(400, problem)
        def store() -> int:
            with pool.connection() as conn:
                return add_reference(conn, str(body["lot_id"]), str(body["sample_id"]), str(body["method"]),
                                     body["composition"], str(body.get("entered_by") or "api"))
        try:
            rid = await run_in_threadpool(store)
        except PlantError as exc:
            return _error(400, str(exc))
        return _json({"id": rid}, status=201)

    async def api_declare_lot(request: Request) -> Response:
        body, problem = await _body(request, ("lot_id", "composition"))
        if problem:
            return _error(400, problem)
        def store() -> None:
            with pool.connection() as conn:
                lots.declare_lot(conn, str(body["lot_id"]), body["composition"], float(body.get("tolerance_pp", 5.0)),
                                 str(body.get("declared_by") or "api"))
        try:
            await run_in_threadpool(store)
        except (PlantError, TypeError, ValueError) as exc:
            return _error(400, str(exc))
        return _json({"lot_id": body["lot_id"]}, status=201)

    routes = [
        Route("/", index),
        Route("/stations", stations_page),
        Route("/lots", lots_page),
        Route("/lots/{lot_id}", lot_page),
        Route("/lots/{lot_id}/chart/{fibre}.svg", lot_chart),
        Route("/lots/{lot_id}/certificate.pdf", certificate),
        Route("/lots/{lot_id}/export.csv", export_csv),
        Route("/lots/{lot_id}/export.json", export_json),
        Route("/results/{message_id}", result_page),
        Route("/api/results", api_results),
        Route("/api/lots", api_declare_lot, methods=["POST"]),
        Route("/api/lots/{lot_id}", api_lot),
        Route("/api/references", api_references, methods=["GET"]),
        Route("/api/references", api_add_reference, methods=["POST"]),
        Route("/api/bias", api_bias),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(pool.open, True, 10)
        try:
            yield
        finally:
            await run_in_threadpool(pool.close)

    return Starlette(routes=routes, lifespan=lifespan)


async def _body(request: Request, required: Tuple[str, ...]) -> Tuple[Dict[str, Any], str]:
    try:
        body = await request.json()
    except ValueError:
        return {}, "the body is not JSON"
    if not isinstance(body, dict):
        return {}, "the body must be a JSON object"
    missing = [k for k in required if k not in body]
    if missing:
        return body, f"missing field(s): {', '.join(missing)}"
    if "composition" in body and not isinstance(body["composition"], dict):
        return body, "composition must be an object {fibre: fraction}"
    return body, ""


class BackgroundServer:
    """The app under uvicorn on a thread of this process (the page bench and the tests use it)."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise PlantError("the web server did not start (see the log above)")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(15)

"""`isic-plant`: the plant-side historian's command line (collect, serve, audit, reference, lot, bench)."""

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

try:
    import psycopg  # noqa: F401 - the [plant] extra's first dependency
except ModuleNotFoundError:  # the board's install has no [plant] extra
    sys.exit("isic-plant needs the [plant] extra: pip install '.[plant]' (the plant service never runs on a board)")

from isic_plant import __version__, db  # noqa: E402 - after the check above
from isic_plant.config import PlantConfig, load_config, parse_broker  # noqa: E402
from isic_plant.errors import PlantError  # noqa: E402

if TYPE_CHECKING:
    from isic_plant.collector import Collector

log = logging.getLogger("isic_plant")

DEFAULT_CONFIG = Path("/etc/isic-plant/plant.toml")


def _setup_logging(level: str) -> None:
    under_systemd = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if under_systemd else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr)


def _config(args: argparse.Namespace) -> PlantConfig:
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return load_config(path)


def _dsn(args: argparse.Namespace, cfg: PlantConfig) -> str:
    return args.db or cfg.dsn


def cmd_migrate(args: argparse.Namespace) -> int:
    dsn = _dsn(args, _config(args))
    applied = db.migrate(dsn)
    print(f"database {db.safe_dsn(dsn)}: " + (f"applied migrations {applied}" if applied else "up to date"))
    return 0


def _collector(args: argparse.Namespace, cfg: PlantConfig, broker: Optional[str]) -> "Collector":
    from isic_plant.collector import Collector, CollectorSettings

    host, port = parse_broker(broker) if broker else cfg.broker
    return Collector(CollectorSettings(
        host=host, port=port, dsn=_dsn(args, cfg), prefix=getattr(args, "prefix", None) or cfg.prefix,
        client_id=getattr(args, "client_id", None) or cfg.client_id,
        share_group=getattr(args, "share_group", None) or cfg.share_group,
        username=cfg.username, password=cfg.password, keepalive_s=cfg.keepalive_s, batch_max=cfg.batch_max,
        batch_wait_s=cfg.batch_wait_s, spc_rules=cfg.spc_rules, spc_baseline=cfg.spc_baseline,
        retire=getattr(args, "retire", False)))


def cmd_collect(args: argparse.Namespace) -> int:
    collector = _collector(args, _config(args), args.broker)
    signal.signal(signal.SIGTERM, lambda *_: collector.stop())
    try:
        collector.run()
    except KeyboardInterrupt:
        collector.stop()
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from isic_plant import audit

    with db.connect(_dsn(args, _config(args))) as conn:
        verdict = audit.verify(conn)
    if args.json:
        print(json.dumps(verdict.as_dict(), indent=2))
    elif verdict.ok:
        print(f"audit chain intact: {verdict.entries} entries, {verdict.records} records checked")
    else:
        if verdict.broken_seq is not None:
            print(f"audit chain BROKEN at entry {verdict.broken_seq}: {verdict.reason}")
        if verdict.unaudited:
            print(f"{len(verdict.unaudited)} record(s) without an audit entry, first: {verdict.unaudited[0]}")
    return 0 if verdict.ok else 2


def cmd_reference_add(args: argparse.Namespace) -> int:
    from isic_plant.compositions import parse_composition
    from isic_plant.reference import add_reference

    composition = parse_composition(args.composition)
    dsn = _dsn(args, _config(args))
    db.migrate(dsn)
    with db.connect(dsn) as conn:
        rid = add_reference(conn, args.lot, args.sample, args.method, composition, args.by or getpass.getuser())
    print(f"reference result {rid} recorded: lot {args.lot}, sample {args.sample}, {args.method}, "
          + ", ".join(f"{k}={v:g}" for k, v in composition.items()))
    return 0


def cmd_reference_report(args: argparse.Namespace) -> int:
    from isic_plant.reference import bias_report

    cfg = _config(args)
    with db.connect(_dsn(args, cfg)) as conn:
        report = bias_report(conn, cfg.coverage_factor, args.lot)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report:
        print("no station result matches a reference result (same lot and sample) yet")
    for row in report:
        spread = "-" if row["spread"] is None else f"{row['spread']:.4f}"
        print(f"{row['station']:<20} {row['blend']:<22} {row['fibre']:<10} n={row['n']:<4} bias={row['bias']:+.4f} "
              f"spread={spread} U={row['expanded_uncertainty']:.4f} ({row['basis']})"
              + ("  FLAGGED: bias exceeds the stated uncertainty" if row["flagged"] else ""))
    return 0


def cmd_lot_declare(args: argparse.Namespace) -> int:
    from isic_plant.compositions import parse_composition
    from isic_plant.lots import declare_lot

    composition = parse_composition(args.composition)
    dsn = _dsn(args, _config(args))
    db.migrate(dsn)
    with db.connect(dsn) as conn:
        declare_lot(conn, args.lot, composition, args.tolerance_pp, args.by or getpass.getuser())
    print(f"lot {args.lot} declared: " + ", ".join(f"{k}={v:g}" for k, v in composition.items())
          + f", tolerance {args.tolerance_pp:g} pp")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from isic_plant.web import create_app

    cfg = _config(args)
    dsn = _dsn(args, cfg)
    db.migrate(dsn)
    collector = _collector(args, cfg, args.collect) if args.collect else None
    if collector is not None:
        threading.Thread(target=collector.run, name="collector", daemon=True).start()
    app = create_app(dsn, cfg)
    host, port = args.host or cfg.web_host, args.port or cfg.web_port
    log.info("serving the historian %s on http://%s:%d/", db.safe_dsn(dsn), host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        if collector is not None:
            collector.stop()
    return 0


def cmd_bench_ingest(args: argparse.Namespace) -> int:
    from isic_plant.bench_ingest import run_ingest_bench

    figures = run_ingest_bench(stations=args.stations, seconds=args.seconds, dsn=args.db, rate=args.rate,
                               kill_collector=not (args.no_disruptions or args.no_kill),
                               restart_broker=not (args.no_disruptions or args.no_broker_restart),
                               progress=not args.json)
    print(json.dumps(figures, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0 if figures["lost"] == 0 and figures["duplicated"] == 0 else 1


def cmd_bench_pages(args: argparse.Namespace) -> int:
    from isic_plant.bench_pages import run_pages_bench

    figures = run_pages_bench(results=args.results, requests=args.requests, dsn=args.db, progress=not args.json)
    print(json.dumps(figures, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isic-plant", description=__doc__)
    p.add_argument("--version", action="version", version=f"isic-plant {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help=f"plant TOML config (default {DEFAULT_CONFIG} when it exists)")
        sp.add_argument("--db", metavar="DSN", help="PostgreSQL connection string, e.g. "
                        "'host=127.0.0.1 dbname=isic_plant user=postgres' (default: the config's database.dsn)")

    sp = sub.add_parser("migrate", help="apply the pending database migrations")
    common(sp)
    sp.set_defaults(func=cmd_migrate)

    sp = sub.add_parser("collect", help="store every station's results, alarms, health and status from MQTT",
                        description="Subscribe (QoS 1, persistent MQTT 5 session, shared subscription for results "
                        "and alarms) and store each document once by message_id; invalid ones are kept as rejects.")
    common(sp)
    sp.add_argument("--broker", metavar="HOST:PORT", help="MQTT broker (default: the config's mqtt.broker)")
    sp.add_argument("--prefix", help="the stations' topic prefix (default isic)")
    sp.add_argument("--client-id", help="this collector's MQTT client id: unique, stable across restarts")
    sp.add_argument("--share-group", help="shared-subscription group of the collectors that split the load")
    sp.add_argument("--retire", action="store_true", help="take this collector (--client-id) out of service: store "
                    "what its session holds, unsubscribe, end the session (the broker would keep queueing its share)")
    sp.set_defaults(func=cmd_collect)

    sp = sub.add_parser("audit", help="the hash-chained audit trail")
    asub = sp.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    av = asub.add_parser("verify", help="recompute the chain and the records; name the first broken link (exit 2)")
    common(av)
    av.add_argument("--json", action="store_true", help="print the verdict as JSON")
    av.set_defaults(func=cmd_audit_verify)

    sp = sub.add_parser("reference", help="lab dissolution results and each station's bias against them")
    rsub = sp.add_subparsers(dest="reference_command", required=True, metavar="ACTION")
    ra = rsub.add_parser("add", help="record a dissolution result for a lot's sample")
    common(ra)
    ra.add_argument("--lot", required=True, help="lot id, as the stations were given it by set_lot")
    ra.add_argument("--sample", required=True, help="sample id, as in the stations' results")
    ra.add_argument("--method", required=True, help='method, e.g. "ISO 1833-11"')
    ra.add_argument("--composition", required=True, help="fractions, e.g. cotton=0.62,polyester=0.38")
    ra.add_argument("--by", help="who entered it (default: the login name)")
    ra.set_defaults(func=cmd_reference_add)
    rr = rsub.add_parser("report", help="bias and spread per station, blend and fibre; flags")
    common(rr)
    rr.add_argument("--lot", help="only this lot")
    rr.add_argument("--json", action="store_true")
    rr.set_defaults(func=cmd_reference_report)

    sp = sub.add_parser("lot", help="lots declared at the plant")
    lsub = sp.add_subparsers(dest="lot_command", required=True, metavar="ACTION")
    ld = lsub.add_parser("declare", help="declare a lot's composition and tolerance (audited)")
    common(ld)
    ld.add_argument("--lot", required=True)
    ld.add_argument("--composition", required=True, help="fractions, e.g. cotton=0.65,polyester=0.35")
    ld.add_argument("--tolerance-pp", type=float, default=5.0, help="allowed deviation per fibre (default 5 pp)")
    ld.add_argument("--by", help="who declared it (default: the login name)")
    ld.set_defaults(func=cmd_lot_declare)

    sp = sub.add_parser("serve", help="web pages, the API, certificates and exports")
    common(sp)
    sp.add_argument("--port", type=int, help="TCP port (default: the config's web.port, 8080)")
    sp.add_argument("--host", help="address to listen on (default: the config's web.host, 127.0.0.1)")
    sp.add_argument("--collect", metavar="HOST:PORT", help="also run a collector on this broker in this process")
    sp.add_argument("--prefix", help="with --collect: the stations' topic prefix (default isic)")
    sp.add_argument("--client-id", help="with --collect: the collector's MQTT client id")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("bench", help="benchmarks that print figures")
    bsub = sp.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    bi = bsub.add_parser("ingest", help="N simulated stations -> a private Mosquitto -> 2 collectors -> PostgreSQL",
                         description="Stored results/s, p99 publish-to-row latency, lost and duplicated counts, "
                         "with one collector killed and restarted and the broker restarted mid-run.")
    bi.add_argument("--stations", type=int, default=20, help="simulated stations (default 20)")
    bi.add_argument("--seconds", type=float, default=20.0, help="publishing time (default 20)")
    bi.add_argument("--rate", type=float, default=0.0, help="results/s per station (default 0: as fast as possible)")
    bi.add_argument("--db", metavar="DSN", help="a server to make a scratch database on "
                    "(default host=127.0.0.1 user=postgres)")
    bi.add_argument("--no-disruptions", action="store_true", help="no collector kill, no broker restart")
    bi.add_argument("--no-kill", action="store_true", help="no collector kill")
    bi.add_argument("--no-broker-restart", action="store_true", help="no broker restart")
    bi.add_argument("--json", action="store_true")
    bi.set_defaults(func=cmd_bench_ingest)
    bp = bsub.add_parser("pages", help="first-byte times of the pages and the certificate for a lot of N results")
    bp.add_argument("--results", type=int, default=10000, help="results in the lot (default 10000)")
    bp.add_argument("--requests", type=int, default=40, help="requests per page (default 40)")
    bp.add_argument("--db", metavar="DSN", help="a server to make a scratch database on")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_bench_pages)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except PlantError as exc:
        print(f"isic-plant: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130




if __name__ == "__main__":
    sys.exit(main())

"""`isic-station bench mqtt`: what the durable outbox and the MQTT link add to time-to-result.

Publishes `--count` result documents at `--rate` per second through a real Outbox (SQLite WAL,
the stored message fsync'd, in `--state-dir`: use the board's state directory, since an fsync on
eMMC costs far more than on tmpfs) and a real MqttLink to the broker at `--host:--port`, and reports:
- `store_ms`: `next_sequence()` + `publish_result()` in the caller (two SQLite commits, one of them
  fsync'd, that the pipeline waits for before it can take the next measurement);
- `delivered_ms`: from taking the sequence number to the broker's PUBACK (`on_delivered`), i.e. the
  messaging share of trigger-to-PUBACK time (store included);
- the depth left in the outbox and the wall time.
"""

import argparse
import json
import os
import tempfile
import threading
import time
from typing import Any, Dict, List

from isic_common.errors import StationError
from isic_common.percentile import percentile
from isic_station.messaging.results import build_result


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench mqtt`."""
    parser = subparsers.add_parser(
        "mqtt", help="outbox write and publish-to-PUBACK latency through a real broker",
        description="Time the durable outbox (SQLite, one fsync per stored message) and the MQTT link: publish results "
                    "at a fixed rate to a running broker and report the store and publish-to-PUBACK latency "
                    "percentiles.")
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    parser.add_argument("--count", type=int, default=200, help="results to publish (default 200)")
    parser.add_argument("--rate", type=float, default=20.0, help="results per second (default 20)")
    parser.add_argument("--state-dir", default=None,
                        help="where the outbox file goes (default: a temporary directory; on a board give "
                             "its state directory, e.g. /var/lib/isic-station)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run)


def _percentiles(values: List[float]) -> Dict[str, float]:
    return {"p50": round(float(percentile(values, 50)), 3), "p99": round(float(percentile(values, 99)), 3),
            "max": round(max(values), 3)}


def measure(host: str, port: int, count: int, rate: float, state_dir: str) -> Dict[str, Any]:
    """Publish `count` results at `rate`/s and return the latency figures (milliseconds)."""
    from isic_station.messaging.mqtt_link import MqttLink, MqttSettings
    from isic_station.messaging.outbox import Outbox

    station = f"bench-{os.getpid()}"
    sent_at: Dict[int, float] = {}
    delivered_ms: List[float] = []
    all_delivered = threading.Event()
    # Held while a row id is being recorded: its PUBACK may come back before publish_result returns.
    recording = threading.Lock()

    def delivered(row_id: int) -> None:
        now = time.perf_counter()
        with recording:
            delivered_ms.append((now - sent_at.pop(row_id)) * 1000.0)
        if len(delivered_ms) == count:
            all_delivered.set()

    with tempfile.TemporaryDirectory(dir=state_dir) as workdir:
        outbox = Outbox(os.path.join(workdir, "outbox.sqlite3"))
        settings = MqttSettings(host=host, port=port, prefix="isic-bench", station_id=station, discovery=False,
                                health_interval_s=3600.0)
        link = MqttLink(settings, outbox, on_delivered=delivered)
        link.start()
        try:
            if not link.wait_connected(5.0):
                raise StationError(f"no MQTT broker answered on {host}:{port} within 5 s (start mosquitto)")
            store_ms: List[float] = []
            started = time.perf_counter()
            for n in range(count):
                due = started + n / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                t0 = time.perf_counter()
                doc = build_result(
                    station=station, sequence=outbox.next_sequence(), composition={"cotton": 0.6, "polyester": 0.4},
                    blend="cotton/polyester", confidence=0.9, uncertainty={"cotton": 0.01, "polyester": 0.01},
                    flags=[], model={"name": "bench", "version": "0", "sha256": "0" * 64}, backend="none",
                    timings_ms={"acquire": 0, "preprocess": 0, "infer": 0, "total": 0})
                with recording:
                    sent_at[link.publish_result(doc)] = t0
                store_ms.append((time.perf_counter() - t0) * 1000.0)
            all_delivered.wait(max(10.0, count / rate))
            wall_s = time.perf_counter() - started
            depth = outbox.stats().depth
        finally:
            link.stop(timeout=2.0)
            outbox.close()
    return {
        "broker": f"{host}:{port}",
        "state_dir": state_dir,
        "count": count,
        "rate_per_s": rate,
        "delivered": len(delivered_ms),
        "left_in_outbox": depth,
        "wall_s": round(wall_s, 3),
        "store_ms": _percentiles(store_ms),
        "delivered_ms": _percentiles(delivered_ms) if delivered_ms else None,
    }


def run(args: argparse.Namespace) -> int:
    """Print the figures (text, or one JSON object with --json)."""
    if args.count < 2 or args.rate <= 0:
        raise StationError(f"--count must be at least 2 and --rate positive (got {args.count}, {args.rate})")
    figures = measure(args.host, args.port, args.count, args.rate, args.state_dir or tempfile.gettempdir())
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"bench mqtt: {figures['count']} results at {figures['rate_per_s']:g}/s to {figures['broker']}, "
          f"outbox in {figures['state_dir']}")
    store = figures["store_ms"]
    print(f"  store (next_sequence + publish_result): p50 {store['p50']} ms, p99 {store['p99']} ms, "
          f"max {store['max']} ms")
    if figures["delivered_ms"]:
        done = figures["delivered_ms"]
        print(f"  store + publish -> PUBACK: p50 {done['p50']} ms, p99 {done['p99']} ms, max {done['max']} ms")
    print(f"  delivered {figures['delivered']}/{figures['count']}, left in outbox {figures['left_in_outbox']}, "
          f"wall {figures['wall_s']} s")
    return 0

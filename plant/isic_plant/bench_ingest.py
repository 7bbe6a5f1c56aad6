"""`isic-plant bench ingest`: N simulated stations -> a private Mosquitto -> 2 collectors sharing the
subscription -> a scratch PostgreSQL database; with one collector killed (SIGKILL) and restarted and
the broker restarted mid-run. Prints stored results/s, publish-to-row latency, lost and duplicated.

- published: first sends (each a fresh message_id); a station re-sends what the broker had not
  acknowledged when its connection broke, as the station's outbox does (`replayed: true`, same id);
- lost: published message_ids with no row; duplicated: result entries in the audit chain beyond
  one per message_id (a row is unique by its key, so a doubled store would show there);
- latency: `stored_at` (the row's clock_timestamp, inside the transaction that commits it; same host
  clock) minus the time the first copy was handed to paho;
- results/s stored: rows / (last stored_at - first publish);
- audit_chain_ok: `audit verify` over everything stored, after the run.
"""

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from isic_common.errors import StationError
from isic_plant import audit, db
from isic_plant.errors import PlantError
from isic_plant.simulated import SimulatedStation
from isic_station.messaging.mqtt_link import MqttSettings
from isic_station.tools.demo import MosquittoProcess

PREFIX = "bench"
STATION_LINK = MqttSettings()


class BenchBroker(MosquittoProcess):
    """Mosquitto on a free port with persistence (sessions and queued messages survive a restart) and
    no cap on a session's queue (a killed collector's share waits for it)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, f"allow_anonymous true\npersistence true\npersistence_location {workdir}/\n"
                                  "max_queued_messages 0\nmax_inflight_messages 0\n"
                                  # run as root, mosquitto drops to its own user and could not write the
                                  # persistence file here
                                  f"user {getpass.getuser()}\n")

    def start(self, timeout_s: float = 10.0) -> "BenchBroker":
        try:
            super().start(timeout_s)
        except StationError as exc:
            raise PlantError(str(exc)) from exc
        return self

    def stop(self, timeout_s: float = 20.0) -> None:
        super().stop(timeout_s)  # a clean stop (SIGTERM) writes the persistence file


class Station(SimulatedStation):
    """A simulated station with an MQTT client that re-sends, marked replayed, what was not acknowledged."""

    def __init__(self, index: int, port: int, sent_at: Dict[str, float], lock: threading.Lock) -> None:
        super().__init__(f"bench-st{index:03d}", f"L-BENCH-{index % 10}", {"cotton": 0.62, "polyester": 0.38},
                         seed=index)
        self.topic = f"{PREFIX}/{self.station_id}/result"
        self.sent_at, self.lock = sent_at, lock
        self.pending: Dict[int, bytes] = {}   # mid -> payload, until its PUBACK
        self.unacked: Dict[str, bytes] = {}   # message_id -> replayed payload, while not acknowledged
        self.by_mid: Dict[int, str] = {}
        self.resends = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-station-{index}")
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.on_publish = self._acked
        self.client.on_connect = self._connected
        # the real station's reconnect backoff (its MqttSettings defaults: 1 s doubling to 30 s)
        self.client.reconnect_delay_set(STATION_LINK.reconnect_min_s, STATION_LINK.reconnect_max_s)
        self._first_connect = True
        self.client.connect(host="127.0.0.1", port=port)
        self.client.loop_start()

    def _acked(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self.lock:
            message_id = self.by_mid.pop(mid, None)
            if message_id is not None:
                self.unacked.pop(message_id, None)

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._first_connect:
            self._first_connect = False
            return
        with self.lock:  # the outbox's replay after a reconnect: same message_id, replayed true
            waiting = list(self.unacked.items())
        for message_id, payload in waiting:
            info = client.publish(self.topic, payload, qos=1)
            with self.lock:
                self.by_mid[info.mid] = message_id
            self.resends += 1

    def publish_one(self) -> None:
        doc = self.result()
        payload = json.dumps(doc).encode()
        with self.lock:
            self.sent_at[doc["message_id"]] = time.time()
            self.unacked[doc["message_id"]] = json.dumps(dict(doc, replayed=True)).encode()
        info = self.client.publish(self.topic, payload, qos=1)
        with self.lock:
            self.by_mid[info.mid] = doc["message_id"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _collector(port: int, dsn: str, index: int, workdir: Path) -> subprocess.Popen:
    log = open(workdir / f"collector{index}.log", "ab")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen([sys.executable, "-m", "isic_plant.cli", "--log-level", "WARNING", "collect",
                             "--broker", f"127.0.0.1:{port}", "--db", dsn, "--prefix", PREFIX,
                             "--client-id", f"bench-collector-{index}", "--share-group", "bench"],
                            stdout=log, stderr=log)


def run_ingest_bench(stations: int = 20, seconds: float = 20.0, dsn: Optional[str] = None, rate: float = 0.0,
                     kill_collector: bool = True, restart_broker: bool = True,
                     progress: bool = True) -> Dict[str, Any]:
    """Run the bench; its figures (see the module docstring)."""
    say = (lambda text: print(f"bench: {text}", file=sys.stderr, flush=True)) if progress else (lambda text: None)
    with db.scratch_database(dsn or db.SERVER_DSN, "isic_plant_bench") as bench_dsn:
        return _run(bench_dsn, stations, seconds, rate, kill_collector, restart_broker, say)


def _run(bench_dsn: str, stations: int, seconds: float, rate: float, kill_collector: bool, restart_broker: bool,
         say: Any) -> Dict[str, Any]:
    name = psycopg.conninfo.conninfo_to_dict(bench_dsn)["dbname"]
    workdir = Path(tempfile.mkdtemp(prefix="isic-plant-bench-"))
    broker = BenchBroker(workdir)
    collectors: List[subprocess.Popen] = []
    fleet: List[Station] = []
    events: List[str] = []
    try:
        db.migrate(bench_dsn)
        broker.start()
        collectors = [_collector(broker.port, bench_dsn, i, workdir) for i in (1, 2)]
        time.sleep(1.5)  # both subscribed (the shared group must exist before the first result)
        sent_at: Dict[str, float] = {}
        lock = threading.Lock()
        fleet = [Station(i, broker.port, sent_at, lock) for i in range(stations)]
        say(f"{stations} stations -> mosquitto :{broker.port} -> 2 collectors -> {name}, {seconds:g} s"
            + (f" at {rate:g}/s each" if rate else " as fast as they can"))
        start = time.time()
        kill_at, broker_at = start + seconds / 3, start + 2 * seconds / 3
        killed_until: Optional[float] = None
        ticks = 0
        while time.time() - start < seconds:
            now = time.time()
            if kill_collector and killed_until is None and now >= kill_at:
                collectors[0].send_signal(signal.SIGKILL)
                collectors[0].wait()
                killed_until = now + 2.0
                events.append(f"{now - start:.1f} s: collector 1 killed (SIGKILL)")
                say(events[-1])
            if killed_until is not None and now >= killed_until and collectors[0].poll() is not None:
                collectors[0] = _collector(broker.port, bench_dsn, 1, workdir)
                events.append(f"{now - start:.1f} s: collector 1 restarted")
                say(events[-1])
            if restart_broker and broker_at and now >= broker_at:
                broker.stop()
                broker.start()
                broker_at = 0
                events.append(f"{time.time() - start:.1f} s: broker restarted")
                say(events[-1])
            for station in fleet:
                station.publish_one()
            ticks += 1
            if rate:
                delay = start + ticks / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
        published_s = time.time() - start
        published = len(sent_at)
        say(f"published {published} in {published_s:.1f} s; waiting for the rows")
        deadline = time.time() + max(60.0, seconds * 3)
        stored = 0
        with db.connect(bench_dsn, autocommit=True) as conn:
            while time.time() < deadline:
                stored = conn.execute("SELECT count(*) FROM results").fetchone()[0]
                if stored >= published:
                    break
                time.sleep(0.5)
            time.sleep(2.0)  # late redeliveries, so copies are counted
            rows = conn.execute("SELECT message_id, extract(epoch FROM stored_at) FROM results").fetchall()
            duplicated = conn.execute("SELECT count(*) - count(DISTINCT ref) FROM audit_log"
                                      " WHERE kind = 'result'").fetchone()[0]
            copies = conn.execute("SELECT coalesce(sum(replayed_copies), 0) FROM results").fetchone()[0]
            rejected = conn.execute("SELECT count(*) FROM rejects").fetchone()[0]
        with db.connect(bench_dsn) as conn:
            chain = audit.verify(conn)
        stored_ids = {r[0] for r in rows}
        missing = set(sent_at) - stored_ids
        lost = len(missing)
        missing_at = sorted(sent_at[m] - start for m in missing)
        unknown = len(stored_ids - set(sent_at))
        latencies = sorted(float(t) - sent_at[m] for m, t in rows if m in sent_at)
        last = max((float(t) for _, t in rows), default=start)

        def pct(q: float) -> Optional[float]:
            return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

        return {"stations": stations, "seconds": round(published_s, 1), "published": published,
                "stored": len(rows), "results_per_s_stored": round(len(rows) / max(last - start, 1e-9), 1),
                "publish_to_row_ms_p50": pct(0.50), "publish_to_row_ms_p99": pct(0.99),
                "publish_to_row_ms_max": round(1000 * latencies[-1], 1) if latencies else None,
                "lost": lost, "lost_published_between_s": [round(missing_at[0], 1), round(missing_at[-1], 1)]
                if missing_at else None, "duplicated": duplicated + unknown, "copies_counted": copies,
                "resent_after_reconnect": sum(s.resends for s in fleet), "rejected": rejected,
                "audit_chain_ok": chain.ok, "disruptions": events, "cpu_cores": os.cpu_count()}
    finally:
        for station in fleet:
            station.close()
        for process in collectors:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

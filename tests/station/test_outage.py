"""A broker outage never stalls acquisition: results pile up in the outbox and are replayed afterwards."""

import json
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path

from fakes.tiny_isicnet import write_tiny_model
from isic_station.tools.demo import DemoBench, ResultWatcher


def outbox_rows(path: Path) -> int:
    """Results stored in the outbox; 0 while the station has created the file but not yet its table."""
    with sqlite3.connect(str(path)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/result'").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            return 0


def test_results_continue_through_a_broker_outage_and_are_replayed(tmp_path: Path, private_broker) -> None:
    model = write_tiny_model(tmp_path / "model", om=False)
    station_id = f"outage-{uuid.uuid4().hex[:6]}"
    with DemoBench(tmp_path / "bench", station_id=station_id, mode="continuous", interval_s=0.5, model=model,
                   camera=False, broker=private_broker.address) as bench:
        bench.calibrate()
        bench.put_line(seed=2, dwell_s=5.0)
        outbox = bench.workdir / "state" / "outbox.sqlite3"
        private_broker.stop()
        bench.start_station()
        # no broker at all: measurements keep coming at the configured rate, into the outbox
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (outbox.exists() and outbox_rows(outbox) >= 6):
            time.sleep(0.2)
        assert outbox_rows(outbox) >= 6, (bench.station_log.read_text()[-2000:])
        started = time.monotonic()
        waiting = outbox_rows(outbox)
        time.sleep(2.0)
        assert outbox_rows(outbox) >= waiting + 3, "acquisition slowed down while the broker was away"
        assert time.monotonic() - started < 5
        private_broker.start()
        watcher = ResultWatcher(*private_broker.address, [f"{bench.topic_base}/result"])
        try:
            replayed, sequences = 0, set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and replayed < waiting:
                topic, raw, _ = watcher.messages.get(timeout=30)
                doc = json.loads(raw)
                sequences.add(doc["sequence"])
                replayed += int(doc["replayed"])
            assert replayed >= waiting, f"{replayed} replayed of {waiting} stored"
            assert set(range(1, waiting + 1)) <= sequences
        finally:
            watcher.close()
        assert bench.stop_station() == 0


def test_a_frozen_broker_does_not_slow_acquisition(tmp_path: Path, private_broker) -> None:
    """The broker accepts TCP but stops answering (SIGSTOP): results keep being produced at the configured
    rate into the outbox, and all of them arrive once it answers again."""
    model = write_tiny_model(tmp_path / "model", om=False)
    with DemoBench(tmp_path / "bench", station_id=f"frozen-{uuid.uuid4().hex[:6]}", mode="continuous",
                   interval_s=0.5, model=model, camera=False, broker=private_broker.address) as bench:
        bench.calibrate()
        bench.put_line(seed=3, dwell_s=5.0)
        watcher = ResultWatcher(*private_broker.address, [f"{bench.topic_base}/result"])
        try:
            bench.start_station()
            first = json.loads(watcher.messages.get(timeout=60)[1])
            outbox = bench.workdir / "state" / "outbox.sqlite3"
            os.kill(private_broker.process.pid, signal.SIGSTOP)
            try:
                time.sleep(3.0)
                waiting = outbox_rows(outbox)
            finally:
                os.kill(private_broker.process.pid, signal.SIGCONT)
            assert waiting >= 4, f"only {waiting} results in 3 s with the broker frozen (2 per second expected)"
            sequences = {first["sequence"]}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(sequences) < first["sequence"] + waiting:
                sequences.add(json.loads(watcher.messages.get(timeout=30)[1])["sequence"])
            assert set(range(first["sequence"], first["sequence"] + waiting)) <= sequences
        finally:
            watcher.close()
        assert bench.stop_station() == 0

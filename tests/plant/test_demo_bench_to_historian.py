"""End to end: the station's own demo bench (emulated spectrometer, virtual microscope, the real
`isic-station run` process) publishing to a Mosquitto of this test's own, `isic-plant collect` as a
process storing into PostgreSQL, the API serving what the station published; then the station is
stopped and its offline status arrives too."""

import json
import subprocess
import sys
import urllib.request

import pytest

from isic_plant import audit, db
from isic_plant.config import PlantConfig
from isic_plant.web import BackgroundServer, create_app
from isic_station.tools.demo import DemoBench, ResultWatcher

from .conftest import query, wait_rows


@pytest.mark.timeout(240)
def test_the_demo_station_feeds_the_historian(private_broker, plant_db, tmp_path):
    collector = subprocess.Popen(
        [sys.executable, "-m", "isic_plant.cli", "collect", "--broker", f"127.0.0.1:{private_broker.port}",
         "--db", plant_db, "--client-id", "e2e-collector"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        bench_dir = tmp_path / "bench"
        with DemoBench(bench_dir, station_id="e2e-st1", interval_s=0.5, broker=private_broker.address) as bench:
            bench.calibrate()
            bench.put_line(seed=7, dwell_s=1.0)
            watcher = ResultWatcher(*private_broker.address, [f"{bench.topic_base}/cmd/+/response"])
            try:
                bench.start_station()
                # commands are not retained: ask once the station is online (its status reached the historian)
                assert wait_rows(plant_db, "SELECT count(*) FROM station_status WHERE state = 'online'", 1,
                                 timeout=90) == 1, (bench.station_log.read_text() if bench.station_log.exists() else "")
                answer = watcher.request(bench.topic_base, "set_lot", {
                    "lot_id": "L-E2E", "composition": {"cotton": 0.65, "polyester": 0.35}}, timeout_s=60)
                assert answer["status"] == "ok", answer
                assert wait_rows(plant_db, "SELECT count(*) FROM results WHERE lot_id = 'L-E2E'", 3, timeout=90) >= 3
            finally:
                watcher.close()
                assert bench.stop_station() == 0
        assert wait_rows(plant_db, "SELECT count(*) FROM station_status WHERE state = 'offline'", 1) == 1
    finally:
        collector.terminate()
        out, _ = collector.communicate(timeout=20)
    assert collector.returncode == 0, out
    assert query(plant_db, "SELECT count(*) FROM rejects")[0][0] == 0
    with BackgroundServer(create_app(plant_db, PlantConfig(dsn=plant_db))) as server, \
            urllib.request.urlopen(f"{server.url}/api/results?station=e2e-st1&lot=L-E2E&limit=1000") as response:
        answer = json.loads(response.read())
    stored = query(plant_db, "SELECT doc FROM results WHERE lot_id = 'L-E2E' ORDER BY measured_at DESC")
    assert answer["total"] == len(stored) and answer["results"] == [r[0] for r in stored]
    assert all(doc["model"]["name"] and doc["spec"]["lot_id"] == "L-E2E" for doc in answer["results"])
    with db.connect(plant_db) as conn:
        assert audit.verify(conn).ok
    assert "stopped; stored" in out

"""SPC rules on known series, the stored-and-published violation path through a real collector and
Mosquitto, and the lab cross-check's bias per station and blend."""

import json
import threading
import uuid

import jsonschema
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from isic_plant import spc
from isic_plant.cli import main
from isic_plant.config import load_config
from isic_plant.documents import parse
from isic_plant.errors import ConfigError
from isic_plant.schemas import load_plant_schema
from isic_plant.simulated import SimulatedStation
from isic_plant.spc_monitor import alarm_topic
from isic_plant.store import write_batch

from .conftest import query, wait_rows

BASE = [0.50, 0.51, 0.49, 0.50, 0.52, 0.48, 0.50, 0.51, 0.49, 0.50]  # mean 0.50, mean MR ~0.0167


def _fired(values, rule):
    lim = spc.limits(BASE)
    return [i for i, r in spc.violations(BASE + values, lim, [rule], start=len(BASE)) if r == rule]


def test_limits_are_mean_and_moving_range_over_d2():
    lim = spc.limits(BASE)
    assert lim.centre == pytest.approx(0.50)
    assert lim.sigma == pytest.approx((sum(abs(b - a) for a, b in zip(BASE, BASE[1:])) / 9) / 1.128)
    assert lim.mr_ucl == pytest.approx(3.267 * lim.mr_mean)


@pytest.mark.parametrize("rule, fires, quiet", [
    ("we1", [0.50, 0.58], [0.50, 0.54]),
    ("we2", [0.54, 0.50, 0.54], [0.54, 0.50, 0.50]),
    ("we3", [0.52, 0.52, 0.50, 0.52, 0.52], [0.52, 0.50, 0.50, 0.52, 0.52]),
    ("we4", [0.505] * 8, [0.505] * 7 + [0.495]),
    ("trend6", [0.47, 0.48, 0.49, 0.50, 0.51, 0.52], [0.47, 0.48, 0.49, 0.50, 0.51, 0.505]),
    ("alternating14", [0.49, 0.51] * 7, [0.49, 0.51] * 6 + [0.51, 0.52]),
    ("stratification15", [0.5] * 15, [0.5] * 14 + [0.53]),
    ("mixture8", [0.53, 0.47] * 4, [0.53, 0.47] * 3 + [0.53, 0.50]),
])
def test_each_rule_fires_on_its_pattern_and_not_on_a_near_miss(rule, fires, quiet):
    assert _fired(fires, rule) and _fired(fires, rule)[-1] == len(BASE) + len(fires) - 1
    assert len(BASE) + len(quiet) - 1 not in _fired(quiet, rule)


def test_rules_come_from_config_and_a_wrong_one_is_named(tmp_path):
    path = tmp_path / "plant.toml"
    path.write_text('[spc]\nrules = ["we1", "trend6"]\nbaseline_points = 10\n')
    assert load_config(path).spc_rules == ("we1", "trend6")
    path.write_text('[spc]\nrules = ["we1", "we9"]\n')
    with pytest.raises(ConfigError, match="unknown rule 'we9'; choose from we1, we2"):
        load_config(path)
    path.write_text('[mqtt]\nbroker = "localhost"\n')
    with pytest.raises(ConfigError, match=r"mqtt.broker: .* does not match .*HOST:PORT"):
        load_config(path)
    path.write_text('[spc]\nrulez = []\n')
    with pytest.raises(ConfigError, match="spc: Additional properties"):
        load_config(path)


def test_a_drifting_lot_is_stored_and_published_as_a_plant_alarm(start_collector, publisher, plant_db, prefix,
                                                                 mqtt_broker):
    alarms = []
    got = threading.Event()
    listener = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listen-{uuid.uuid4().hex[:6]}")
    listener.on_message = lambda c, u, m: (alarms.append(json.loads(m.payload)), got.set())
    listener.connect(*mqtt_broker)
    listener.subscribe(alarm_topic(prefix), qos=1)
    listener.loop_start()
    try:
        start_collector(spc_rules=("we1", "we4"), spc_baseline=10)
        station = SimulatedStation("st-spc", "L-drift", {"cotton": 0.6, "polyester": 0.4}, noise=0.005, seed=3)
        docs = [station.result() for _ in range(12)] + [station.result(shift={"cotton": 0.08})]
        for doc in docs:
            publisher.publish(f"{prefix}/st-spc/result", doc)
        assert wait_rows(plant_db, "SELECT count(*) FROM spc_violations WHERE rule = 'we1'", 1) >= 1
        assert got.wait(10), "no plant alarm arrived"
        assert wait_rows(plant_db, "SELECT count(*) FROM spc_violations WHERE published_at IS NOT NULL", 1) >= 1
    finally:
        listener.loop_stop()
        listener.disconnect()
    rows = query(plant_db, "SELECT fibre, rule, message_id FROM spc_violations WHERE rule = 'we1' ORDER BY fibre")
    assert {r[0] for r in rows} == {"cotton", "polyester"} and {r[2] for r in rows} == {docs[-1]["message_id"]}
    jsonschema.validate(alarms[0], load_plant_schema("plant_alarm"))
    assert alarms[0]["lot_id"] == "L-drift" and alarms[0]["result_message_id"] == docs[-1]["message_id"]


def test_reference_bias_per_station_and_blend_flags_the_biased_station(plant_db, capsys):
    good = SimulatedStation("st-good", "L-9", {"cotton": 0.62, "polyester": 0.38}, noise=0.01, seed=1)
    biased = SimulatedStation("st-biased", "L-9", {"cotton": 0.62, "polyester": 0.38}, noise=0.01, seed=2,
                              bias={"cotton": 0.06, "polyester": -0.06})
    items = []
    for st in (good, biased):
        for sample in ("S1", "S2", "S3"):
            for _ in range(4):
                items.append(parse(f"isic/{st.station_id}/result", json.dumps(st.result(sample)).encode(), "isic"))
    with psycopg.connect(plant_db) as conn:
        write_batch(conn, items)
    for sample in ("S1", "S2", "S3"):
        assert main(["reference", "add", "--db", plant_db, "--lot", "L-9", "--sample", sample,
                     "--method", "ISO 1833-11", "--composition", "cotton=0.62,polyester=0.38"]) == 0
    assert "reference result 1 recorded" in capsys.readouterr().out
    assert main(["reference", "report", "--db", plant_db, "--json"]) == 0
    report = {(r["station"], r["fibre"]): r for r in json.loads(capsys.readouterr().out)}
    assert report[("st-good", "cotton")]["n"] == 12 and not report[("st-good", "cotton")]["flagged"]
    assert report[("st-biased", "cotton")]["flagged"]
    assert report[("st-biased", "cotton")]["bias"] == pytest.approx(0.06, abs=0.012)
    assert report[("st-biased", "cotton")]["blend"] == "cotton/polyester"
    assert main(["reference", "add", "--db", plant_db, "--lot", "L-9", "--sample", "S4", "--method", "ISO 1833-11",
                 "--composition", "cotton=62,polyester=38"]) == 1
    assert "fraction between 0 and 1" in capsys.readouterr().err

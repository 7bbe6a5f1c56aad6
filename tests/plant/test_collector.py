"""The collector against the machine's Mosquitto and PostgreSQL: stored once by message_id, replayed
copies counted, rejects kept with their reason, health and status, a shared subscription splitting the load."""

import json
import time

import psycopg

from isic_plant import audit, db
from isic_plant.simulated import SimulatedStation

from .conftest import query, wait_rows


def test_results_are_stored_once_and_replayed_copies_counted(start_collector, publisher, plant_db, prefix):
    start_collector()
    station = SimulatedStation("line1-st1", "L-1", {"cotton": 0.62, "polyester": 0.38})
    docs = [station.result(f"S{i}") for i in range(5)]
    for doc in docs:
        publisher.publish(f"{prefix}/line1-st1/result", doc)
    replay = dict(docs[2], replayed=True)
    publisher.publish(f"{prefix}/line1-st1/result", replay)
    publisher.publish(f"{prefix}/line1-st1/result", replay)
    assert wait_rows(plant_db, "SELECT count(*) FROM results", 5) == 5
    assert wait_rows(plant_db, "SELECT coalesce(sum(replayed_copies), 0) FROM results", 2) == 2
    time.sleep(0.3)
    rows = query(plant_db, "SELECT message_id, replayed_copies, doc FROM results ORDER BY sequence")
    assert [r[0] for r in rows] == [d["message_id"] for d in docs]
    assert [r[1] for r in rows] == [0, 0, 2, 0, 0]
    assert rows[0][2] == json.loads(json.dumps(docs[0]))  # the document as published


def test_invalid_documents_are_kept_as_rejects_with_the_reason(start_collector, publisher, plant_db, prefix):
    start_collector()
    good = SimulatedStation("st-a", None, {"cotton": 1.0}).result()
    publisher.publish(f"{prefix}/st-a/result", b"\xff not json")
    publisher.publish(f"{prefix}/st-a/result", dict(good, confidence="high"))
    publisher.publish(f"{prefix}/st-b/result", good)  # a document of st-a on st-b's topic
    publisher.publish(f"{prefix}/st-a/result", good)
    assert wait_rows(plant_db, "SELECT count(*) FROM rejects", 3) == 3
    assert wait_rows(plant_db, "SELECT count(*) FROM results", 1) == 1
    reasons = [r[0] for r in query(plant_db, "SELECT reason FROM rejects ORDER BY id")]
    assert "not UTF-8 JSON" in reasons[0]
    assert "confidence" in reasons[1] and "result.schema.json" in reasons[1]
    assert "station 'st-a'" in reasons[2] and "'st-b'" in reasons[2]
    payloads = [bytes(r[0]) for r in query(plant_db, "SELECT payload FROM rejects ORDER BY id")]
    assert payloads[0] == b"\xff not json"


def test_health_and_status_are_stored_by_their_keys(start_collector, publisher, plant_db, prefix):
    from isic_station.messaging.results import build_health

    publisher.publish(f"{prefix}/st-h/status", {"state": "online", "station": "st-h"}, retain=True)
    start_collector()  # sees the retained status on subscribing
    health = build_health(station="st-h", uptime_s=12.0, results={"total": 3, "per_minute": 1.5},
                          inference_ms={"p50": 8.0, "p99": 9.0}, devices={},
                          calibration={"dark_age_s": 1.0, "white_age_s": 1.0},
                          outbox={"depth": 0, "oldest_age_s": None, "bytes": 0, "quota_bytes": 1,
                                  "dropped_total": 0},
                          mqtt={"connected": True, "reconnects": 0, "published_total": 3})
    publisher.publish(f"{prefix}/st-h/health", health)
    publisher.publish(f"{prefix}/st-h/health", health)  # the same report twice: one row
    assert wait_rows(plant_db, "SELECT count(*) FROM health_reports", 1) == 1
    assert wait_rows(plant_db, "SELECT count(*) FROM station_status WHERE state = 'online'", 1) == 1
    publisher.publish(f"{prefix}/st-h/status", {"state": "offline", "station": "st-h"}, retain=True)
    assert wait_rows(plant_db, "SELECT count(*) FROM station_status WHERE state = 'offline'", 1) == 1
    assert query(plant_db, "SELECT count(*) FROM audit_log WHERE kind = 'status'")[0][0] == 2
    publisher.publish(f"{prefix}/st-h/status", b"", retain=True)  # clear the retained message


def test_two_collectors_share_the_subscription_nothing_lost_or_doubled(start_collector, publisher, plant_db,
                                                                        prefix):
    first, second = start_collector(), start_collector()
    stations = [SimulatedStation(f"st-{i}", "L-share", {"cotton": 0.5, "polyester": 0.5}, seed=i) for i in range(4)]
    sent = []
    for _ in range(50):
        for st in stations:
            doc = st.result()
            sent.append(doc["message_id"])
            publisher.client.publish(f"{prefix}/{st.station_id}/result", json.dumps(doc), qos=1)
    assert wait_rows(plant_db, "SELECT count(*) FROM results", len(sent), timeout=20) == len(sent)
    time.sleep(0.5)
    first.stop()
    second.stop()
    stored = {r[0] for r in query(plant_db, "SELECT message_id FROM results")}
    assert stored == set(sent)
    assert query(plant_db, "SELECT count(*) FROM audit_log WHERE kind = 'result'")[0][0] == len(sent)
    a, b = first.collector.totals["result"], second.collector.totals["result"]
    assert a + b == len(sent) and a > 0 and b > 0, (a, b)
    with db.connect(plant_db) as conn:  # two writers, one intact chain
        verdict = audit.verify(conn)
    assert verdict.ok and verdict.entries == len(sent), verdict.as_dict()


def test_a_document_the_database_refuses_is_a_reject_and_spoils_nothing(start_collector, publisher, plant_db, prefix):
    running = start_collector(batch_wait_s=0.5)  # the three arrive in one batch
    station = SimulatedStation("st-nul", "L-nul", {"cotton": 1.0})
    before, nul, after = station.result("ok-1"), station.result("bad\u0000id"), station.result("ok-2")
    for doc in (before, nul, after):
        publisher.client.publish(f"{prefix}/st-nul/result", json.dumps(doc), qos=1)
    assert wait_rows(plant_db, "SELECT count(*) FROM rejects", 1) == 1
    assert wait_rows(plant_db, "SELECT count(*) FROM results", 2) == 2
    reason = query(plant_db, "SELECT reason FROM rejects")[0][0]
    assert reason.startswith("refused by the database") and "NUL" in reason
    assert {r[0] for r in query(plant_db, "SELECT sample_id FROM results")} == {"ok-1", "ok-2"}
    assert running.thread.is_alive()


def test_a_lost_database_connection_loses_nothing(start_collector, publisher, plant_db, prefix):
    start_collector()
    station = SimulatedStation("st-db", None, {"cotton": 1.0})
    for _ in range(5):
        publisher.publish(f"{prefix}/st-db/result", station.result())
    assert wait_rows(plant_db, "SELECT count(*) FROM results", 5) == 5
    dbname = psycopg.conninfo.conninfo_to_dict(plant_db)["dbname"]
    with psycopg.connect(db.SERVER_DSN, autocommit=True) as admin:  # what a database restart does to the link
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                               (dbname,)).fetchone()[0]
    assert killed >= 1
    for _ in range(5):
        publisher.publish(f"{prefix}/st-db/result", station.result())
    assert wait_rows(plant_db, "SELECT count(*) FROM results", 10, timeout=30) == 10
    assert sorted(r[0] for r in query(plant_db, "SELECT sequence FROM results")) == list(range(1, 11))


def test_a_stopped_member_keeps_its_share_until_it_is_retired(start_collector, publisher, plant_db, prefix):
    stays = start_collector(client_id=f"{prefix}-stays")
    leaves = start_collector(client_id=f"{prefix}-leaves")
    leaves.stop()  # its persistent session stays in the group: the broker queues its share for it
    station = SimulatedStation("st-r", None, {"cotton": 1.0})
    for _ in range(40):
        publisher.publish(f"{prefix}/st-r/result", station.result())
    time.sleep(1.0)
    waiting = 40 - query(plant_db, "SELECT count(*) FROM results")[0][0]
    assert waiting > 0  # round robin gave the stopped member some of them
    retired = start_collector(client_id=f"{prefix}-leaves", retire=True)
    retired.thread.join(20)
    assert not retired.thread.is_alive(), "the retiring collector did not finish"
    assert retired.collector.totals["result"] == waiting
    for _ in range(20):
        publisher.publish(f"{prefix}/st-r/result", station.result())
    assert wait_rows(plant_db, "SELECT count(*) FROM results", 60) == 60
    time.sleep(0.5)
    assert stays.collector.totals["result"] == 60 - waiting  # the retired session gets no share any more

"""The MQTT link against the machine's real Mosquitto: results, state, health, commands, discovery, stop."""

import json
import time

import pytest

from isic_common.errors import ConfigError, StateDirError
from isic_station.daemon.spec_check import LotSpec
from isic_station.messaging.commands import CommandRouter
from isic_station.messaging.ha_discovery import node_id
from isic_station.messaging.mqtt_link import MqttLink, MqttSettings
from isic_station.messaging.outbox import Outbox
from isic_station.schemas import validation_errors

from .conftest import fast_settings
from .mqtt_helpers import FIBRES, Recorder, health_part, publish_once, sample_result, unique, wait_until


@pytest.fixture
def make_link(mqtt_broker, names, tmp_path, clear_retained):
    """Build started links on the machine's broker (outbox in tmp_path, fast settings unless given);
    each is stopped and its retained topics cleared at the end of the test."""
    made = []

    def make(settings=None, **kwargs):
        settings = settings or fast_settings(*mqtt_broker, names)
        outbox = Outbox(tmp_path / f"outbox-{len(made)}.sqlite3")
        link = MqttLink(settings, outbox, **kwargs)
        link.start()
        made.append((link, outbox))
        clear_retained.extend([link.topics.status, link.topics.state, link.topics.health])
        return link, outbox

    yield make
    for link, outbox in made:
        link.stop(timeout=2.0)
        outbox.close()


@pytest.fixture
def recorder_factory():
    made = []

    def make(*args, **kwargs):
        rec = Recorder(*args, **kwargs)
        rec.wait_subscribed()
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()


def test_results_arrive_at_qos1_in_order_validate_and_leave_the_outbox(
        mqtt_broker, names, make_link, recorder_factory):
    base = names["base"]
    rec = recorder_factory(*mqtt_broker, [f"{base}/#"])
    delivered = []
    link, outbox = make_link(health_source=health_part, on_delivered=delivered.append)
    assert link.wait_connected(5)
    sent = [sample_result(names["station"], outbox.next_sequence()) for _ in range(5)]
    rows = [link.publish_result(doc) for doc in sent]
    results = rec.wait_count(link.topics.result, 5)
    assert [r["sequence"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["message_id"] for r in results] == [d["message_id"] for d in sent]
    for doc in results:
        assert validation_errors(doc, "result") == []
        assert doc["replayed"] is False
    assert {m[3] for m in rec.messages if m[0] == link.topics.result} == {1}, "results travel at QoS 1"
    wait_until(lambda: outbox.stats().depth == 0, 5, "PUBACKs to empty the outbox")
    assert link.stats()["published_total"] == 5
    assert delivered == rows, "on_delivered reports each outbox entry once, when its PUBACK came"
    # A dashboard that connects later gets the latest result and the availability, retained.
    late = recorder_factory(*mqtt_broker, [link.topics.state, link.topics.status, link.topics.health])
    late.wait_for(lambda m: {link.topics.state, link.topics.status, link.topics.health} <= {x[0] for x in m},
                  5, "retained state, status and health")
    assert late.payloads(link.topics.state)[-1]["sequence"] == 5
    assert late.payloads(link.topics.status)[-1] == {"state": "online", "station": names["station"]}
    health = late.payloads(link.topics.health)[-1]
    assert validation_errors(health, "health") == []
    assert health["mqtt"]["connected"] is True and health["devices"]["camera"]["reconnects"] == 2
    assert all(m[2] for m in late.messages), "state, status and health are retained"


def test_health_is_periodic_and_reports_the_outbox(mqtt_broker, names, make_link, recorder_factory):
    rec = recorder_factory(*mqtt_broker, [f"{names['base']}/health"])
    link, outbox = make_link(fast_settings(*mqtt_broker, names, health_interval_s=0.3), health_source=health_part)
    docs = rec.wait_count(link.topics.health, 3, timeout=5)
    for doc in docs:
        assert validation_errors(doc, "health") == []
        assert doc["outbox"]["quota_bytes"] == outbox.quota_bytes
    times = [doc["reported_at"] for doc in docs]
    assert times == sorted(times) and len(set(times)) == len(times)


def test_broken_health_source_does_not_stop_results(mqtt_broker, names, make_link, recorder_factory):
    def broken():
        raise RuntimeError("sensor gone")

    rec = recorder_factory(*mqtt_broker, [f"{names['base']}/#"])
    link, outbox = make_link(fast_settings(*mqtt_broker, names, health_interval_s=0.1), health_source=broken)
    assert link.wait_connected(5)
    time.sleep(0.3)
    link.publish_result(sample_result(names["station"], outbox.next_sequence()))
    assert rec.wait_count(link.topics.result, 1)[0]["sequence"] == 1
    assert rec.count(link.topics.health) == 0


def test_commands_round_trip_with_validation(mqtt_broker, names, make_link, recorder_factory):
    lots = []

    def set_lot(payload):
        lots.append(LotSpec.from_dict(payload, known_fibres=FIBRES))
        return {"lot_id": lots[-1].lot_id}

    def measure(payload):
        raise RuntimeError("spectrometer timed out")

    router = CommandRouter({"set_lot": set_lot, "measure": measure, "status": lambda p: {"lot": "L1"}})
    base = names["base"]
    rec = recorder_factory(*mqtt_broker, [f"{base}/cmd/+/response"])
    link, _ = make_link(commands=router)
    assert link.wait_connected(5)
    host, port = mqtt_broker
    publish_once(host, port, link.topics.command("set_lot"),
                 json.dumps({"transaction": "t1", "lot_id": "L1", "composition": {"cotton": 0.6, "polyester": 0.4},
                             "tolerance_pp": 4}).encode())
    publish_once(host, port, link.topics.command("set_lot"), b'{"transaction": "t2", "lot_id": "L2"}')
    publish_once(host, port, link.topics.command("set_lot"), b"not json")
    publish_once(host, port, link.topics.command("measure"), b'{"transaction": 3}')
    publish_once(host, port, link.topics.command("frobnicate"), b'{"transaction": 4}')
    publish_once(host, port, link.topics.command("status"), b"")
    set_lot_answers = rec.wait_count(link.topics.response("set_lot"), 3)
    for doc in set_lot_answers:
        assert validation_errors(doc, "command_response") == []
    assert set_lot_answers[0] == {"status": "ok", "data": {"lot_id": "L1"}, "error": None, "transaction": "t1"}
    assert set_lot_answers[1]["status"] == "error" and set_lot_answers[1]["transaction"] == "t2"
    assert "'composition' is a required property" in set_lot_answers[1]["error"]
    assert set_lot_answers[2]["status"] == "error" and "not valid JSON" in set_lot_answers[2]["error"]
    assert lots == [LotSpec("L1", {"cotton": 0.6, "polyester": 0.4}, 4.0)]
    (crash,) = rec.wait_count(link.topics.response("measure"), 1)
    assert crash["status"] == "error" and "spectrometer timed out" in crash["error"] and crash["transaction"] == 3
    (unknown,) = rec.wait_count(link.topics.response("frobnicate"), 1)
    assert "unknown command 'frobnicate'" in unknown["error"] and unknown["transaction"] == 4
    (status,) = rec.wait_count(link.topics.response("status"), 1)
    assert status == {"status": "ok", "data": {"lot": "L1"}, "error": None, "transaction": None}
    assert link.connected, "bad commands and a crashing handler leave the link up"


def test_home_assistant_discovery_and_republish_on_birth(mqtt_broker, names, make_link, recorder_factory,
                                                         clear_retained):
    ha = names["ha_prefix"]
    rec = recorder_factory(*mqtt_broker, [f"{ha}/+/{node_id(names['station'])}/+/config"])
    link, _ = make_link(ha_fibres=FIBRES, sw_version="9.9.9")
    expected = {f"{ha}/sensor/{node_id(names['station'])}/{obj}/config"
                for obj in ("composition_cotton", "composition_polyester", "blend", "confidence")}
    expected.add(f"{ha}/binary_sensor/{node_id(names['station'])}/status/config")
    clear_retained.extend(sorted(expected))
    rec.wait_for(lambda m: expected <= {x[0] for x in m}, 5, "discovery configs")
    first = len(rec.messages)
    assert first == len(expected)
    for topic in expected:
        (config,) = rec.payloads(topic)
        assert config["device"]["identifiers"] == [node_id(names["station"])]
        assert config["device"]["sw_version"] == "9.9.9"
        assert config["unique_id"].startswith(node_id(names["station"]))
        assert config["state_topic"] in (link.topics.state, link.topics.status)
        if "binary_sensor" not in topic:
            assert config["availability_topic"] == link.topics.status
    cotton = rec.payloads(f"{ha}/sensor/{node_id(names['station'])}/composition_cotton/config")[0]
    assert cotton["unit_of_measurement"] == "%" and "composition['cotton']" in cotton["value_template"]
    publish_once(*mqtt_broker, f"{ha}/status", b"offline")
    publish_once(*mqtt_broker, f"{ha}/status", b"online")
    rec.wait_for(lambda m: len(m) >= 2 * first, 5, "discovery re-published after Home Assistant came online")
    # A new model without polyester removes that entity (empty retained payload).
    link.set_ha_fibres(["cotton"])
    removed = f"{ha}/sensor/{node_id(names['station'])}/composition_polyester/config"
    rec.wait_for(lambda m: any(x[0] == removed and x[1] == b"" for x in m), 5, "entity removal")


def test_stop_flushes_and_publishes_offline(mqtt_broker, names, make_link, recorder_factory):
    rec = recorder_factory(*mqtt_broker, [f"{names['base']}/#"])
    link, outbox = make_link()
    assert link.wait_connected(5)
    for _ in range(20):
        link.publish_result(sample_result(names["station"], outbox.next_sequence()))
    started = time.monotonic()
    link.stop(timeout=5.0)
    assert time.monotonic() - started < 7.0
    assert outbox.stats().depth == 0, "stop sends what it can before disconnecting"
    statuses = rec.wait_for(
        lambda m: any(x[0] == link.topics.status and b"offline" in x[1] for x in m), 5, "offline")
    assert [json.loads(x[1])["sequence"] for x in statuses if x[0] == link.topics.result] == list(range(1, 21))
    assert rec.payloads(link.topics.status)[-1] == {"state": "offline", "station": names["station"]}
    assert not link.connected


@pytest.mark.parametrize("overrides, key", [
    ({"port": 0}, "mqtt.port"),
    ({"qos": 0}, "mqtt.qos"),
    ({"prefix": "a/+/b"}, "station.prefix"),
    ({"prefix": "isic/"}, "station.prefix"),
    ({"station_id": "a/b"}, "station.id"),
    ({"tls": True, "ca_file": "/nonexistent/ca.pem"}, "mqtt.ca_file"),
    ({"ca_file": "/etc/hostname"}, "mqtt.tls"),
    ({"cert_file": "/etc/hostname"}, "mqtt.cert_file"),
    ({"password": "s3cret"}, "mqtt.password"),
])
def test_settings_errors_name_the_key(overrides, key):
    values = dict(host="127.0.0.1", station_id="st1")
    values.update(overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MqttSettings(**values)


def test_password_is_not_shown(caplog):
    settings = MqttSettings(username="station", password="hunter2-" + unique(""))
    assert settings.password not in repr(settings)


def test_link_recovers_from_an_outbox_error_without_losing_the_result(mqtt_broker, names, make_link,
                                                                      recorder_factory, caplog):
    rec = recorder_factory(*mqtt_broker, [f"{names['base']}/result"])
    link, outbox = make_link()
    assert link.wait_connected(5)
    real_ack = outbox.ack
    failed = []

    def ack_failing_once(mid):
        if not failed:
            failed.append(mid)
            raise StateDirError("outbox database cannot be written: disk I/O error (injected)")
        return real_ack(mid)

    outbox.ack = ack_failing_once
    doc = sample_result(names["station"], outbox.next_sequence())
    link.publish_result(doc)
    first, again = rec.wait_count(link.topics.result, 2, timeout=10)
    assert first["message_id"] == again["message_id"] == doc["message_id"]
    assert (first["replayed"], again["replayed"]) == (False, True)
    wait_until(lambda: outbox.stats().depth == 0, 5, "the re-sent result's PUBACK")
    assert link.connected and link.stats()["reconnects"] >= 1
    assert any("MQTT link failed" in r.getMessage() for r in caplog.records)


def test_retained_commands_are_not_run(mqtt_broker, names, make_link, recorder_factory, clear_retained):
    calls = []
    command = f"{names['base']}/cmd/measure"
    publish_once(*mqtt_broker, command, b'{"transaction": 1}', retain=True)
    clear_retained.append(command)
    rec = recorder_factory(*mqtt_broker, [f"{names['base']}/cmd/+/response"])
    link, _ = make_link(commands=CommandRouter({"measure": lambda p: calls.append(p) or {"sequence": 1}}))
    (refused,) = rec.wait_count(link.topics.response("measure"), 1)
    assert refused["status"] == "error" and "retained" in refused["error"]
    publish_once(*mqtt_broker, command, b'{"transaction": 2}')
    answers = rec.wait_count(link.topics.response("measure"), 2)
    assert answers[1] == {"status": "ok", "data": {"sequence": 1}, "error": None, "transaction": 2}
    assert calls == [{}], "only the live command ran"


def test_a_command_retained_while_the_station_is_connected_is_refused_not_run(
        mqtt_broker, names, make_link, recorder_factory, clear_retained):
    """MQTT 3.1.1 would deliver it live with the retain flag cleared; retain-as-published keeps it."""
    calls = []
    link, _ = make_link(commands=CommandRouter({"calibrate": lambda p: calls.append(p) or {"reference": "dark"}}))
    assert link.wait_connected(5.0)
    rec = recorder_factory(*mqtt_broker, [f"{names['base']}/cmd/+/response"])
    command = link.topics.command("calibrate")
    clear_retained.append(command)
    publish_once(*mqtt_broker, command, b'{"reference": "dark", "transaction": "r1"}', retain=True)
    (refused,) = rec.wait_count(link.topics.response("calibrate"), 1)
    assert refused["status"] == "error" and "retain" in refused["error"] and refused["transaction"] == "r1"
    # Clearing it (empty retained payload) is neither run nor answered; a live command still runs.
    publish_once(*mqtt_broker, command, b"", retain=True)
    publish_once(*mqtt_broker, command, b'{"reference": "white", "transaction": "live"}')
    answers = rec.wait_count(link.topics.response("calibrate"), 2)
    assert [a["transaction"] for a in answers] == ["r1", "live"] and answers[1]["status"] == "ok"
    time.sleep(0.3)
    assert rec.count(link.topics.response("calibrate")) == 2, "the empty retained payload got no answer"
    assert calls == [{"reference": "white"}], "only the live command ran"


def test_oversized_commands_are_refused_unread_with_a_short_answer(mqtt_broker, names, make_link,
                                                                   recorder_factory):
    calls = []
    link, _ = make_link(commands=CommandRouter({"measure": lambda p: calls.append(p) or {"sequence": 1}}))
    assert link.wait_connected(5.0)
    rec = recorder_factory(*mqtt_broker, [f"{names['base']}/cmd/+/response"])
    command, answers = link.topics.command("measure"), link.topics.response("measure")
    big = json.dumps({"sample_id": "S" * 100_000, "transaction": "big"}).encode()
    publish_once(*mqtt_broker, command, big)
    (refused,) = rec.wait_count(answers, 1)
    assert refused["status"] == "error" and "over this station's limit of 65536 bytes" in refused["error"]
    assert len(refused["error"]) < 200 and "SSSS" not in refused["error"]
    # 10 MB never reaches the station: its CONNECT announced a 1 MiB Maximum Packet Size, the broker drops it.
    publish_once(*mqtt_broker, command, json.dumps({"sample_id": "S" * 10_000_000}).encode())
    publish_once(*mqtt_broker, command, b'{"sample_id": "ok", "transaction": "after"}')
    replies = rec.wait_count(answers, 2)
    assert [r["transaction"] for r in replies] == [None, "after"] and replies[1]["status"] == "ok"
    assert calls == [{"sample_id": "ok"}]
    assert max(len(m[1]) for m in rec.messages) < 1000, "no reply echoes the payload"


@pytest.mark.parametrize("host", ["broker.plant.example", "10.0.0.5", "::2"])
def test_a_password_in_plain_text_to_another_machine_is_refused(host):
    with pytest.raises(ConfigError, match="allow_plaintext_password"):
        MqttSettings(host=host, username="station", password="secret")
    # explicit consent, TLS, or a broker on this machine are all fine
    MqttSettings(host=host, username="station", password="secret", allow_plaintext_password=True)
    for local in ("127.0.0.1", "localhost", "::1", "127.0.1.1"):
        MqttSettings(host=local, username="station", password="secret")

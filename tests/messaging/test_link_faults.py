"""The link through broker faults, each on a Mosquitto of the test's own: no PUBACK, broker down at
start, broker restarted mid-stream, the station process killed, credentials and TLS."""

import json
import logging
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from isic_station.messaging.mqtt_link import MqttLink
from isic_station.messaging.outbox import MIN_QUOTA_BYTES, Outbox
from isic_station.schemas import validation_errors
from isic_station.tools.demo import free_port

from .conftest import fast_settings, reconfigure
from .mqtt_helpers import Recorder, health_part, publish_once, sample_result, unique, wait_until


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


@pytest.fixture
def links():
    made = []
    yield made
    for link in made:
        link.stop(timeout=2.0)


def session_recorder(broker, topics):
    """A subscriber whose session (and queued QoS 1 messages) the persistent broker keeps while it is down."""
    rec = Recorder(broker.host, broker.port, topics, client_id=unique("keep-"), persistent=True)
    rec.wait_subscribed()
    return rec


def test_entries_stay_until_their_puback_arrives_and_in_flight_is_bounded(private_broker, names, outbox, links):
    link = MqttLink(fast_settings(*private_broker.address, names, max_inflight=2), outbox)
    link.start()
    links.append(link)
    assert link.wait_connected(5)
    private_broker.process.send_signal(signal.SIGSTOP)  # the broker takes the bytes but answers nothing
    try:
        for _ in range(5):
            link.publish_result(sample_result(names["station"], outbox.next_sequence()))
        wait_until(lambda: outbox.inflight_count() == 2, 5, "the first results to be handed to paho")
        time.sleep(0.5)
        assert outbox.stats().depth == 5, "no PUBACK yet: nothing may be deleted"
        assert outbox.inflight_count() == 2, "never more than max_inflight unacknowledged"
        assert [e.row_id for e in outbox.pending(10)] == [3, 4, 5], "the rest waits in the outbox, in order"
    finally:
        private_broker.process.send_signal(signal.SIGCONT)
    wait_until(lambda: outbox.stats().depth == 0, 5, "PUBACKs after the broker resumed")
    assert link.stats()["published_total"] == 5


def test_broker_down_at_start_then_up_delivers_everything_in_order_as_replayed(
        persistent_broker, names, outbox, links):
    base = f"{names['prefix']}/{names['station']}"
    rec = session_recorder(persistent_broker, [f"{base}/result", f"{base}/alarm"])
    persistent_broker.stop()
    try:
        link = MqttLink(fast_settings(*persistent_broker.address, names), outbox)
        started = time.monotonic()
        link.start()
        links.append(link)
        for _ in range(6):
            link.publish_result(sample_result(names["station"], outbox.next_sequence()))
        link.publish_alarm({"kind": "test", "replayed": False})
        assert time.monotonic() - started < 1.0, "a broker that is down must not block the station"
        time.sleep(0.5)
        assert not link.connected and outbox.stats().depth == 7
        assert outbox.stats().oldest_age_s >= 0.4
    finally:
        persistent_broker.start()
    results = rec.wait_count(f"{base}/result", 6, timeout=15)
    assert [r["sequence"] for r in results] == [1, 2, 3, 4, 5, 6]
    assert all(r["replayed"] is True for r in results)
    assert all(validation_errors(r, "result") == [] for r in results)
    assert rec.wait_count(f"{base}/alarm", 1)[0]["replayed"] is True
    wait_until(lambda: outbox.stats().depth == 0, 5, "the outbox to drain")
    rec.close()


def test_broker_restart_mid_stream_loses_nothing(persistent_broker, names, outbox, links):
    base = f"{names['prefix']}/{names['station']}"
    rec = session_recorder(persistent_broker, [f"{base}/result"])
    link = MqttLink(fast_settings(*persistent_broker.address, names), outbox)
    link.start()
    links.append(link)
    assert link.wait_connected(5)
    total = 60
    producer_done = threading.Event()

    def produce():
        for _ in range(total):
            link.publish_result(sample_result(names["station"], outbox.next_sequence()))
            time.sleep(0.02)
        producer_done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    rec.wait_for(lambda m: len(m) >= 10, 10, "the first results")
    persistent_broker.stop()
    time.sleep(0.3)
    persistent_broker.start()
    producer.join(10)
    assert producer_done.is_set()
    rec.wait_for(lambda m: {json.loads(x[1])["sequence"] for x in m} >= set(range(1, total + 1)), 20,
                 "every sequence number")
    first_arrival = []
    for doc in rec.payloads(f"{base}/result"):
        if doc["sequence"] not in first_arrival:
            first_arrival.append(doc["sequence"])
    assert first_arrival == list(range(1, total + 1)), "first deliveries keep the order"
    assert any(doc["replayed"] for doc in rec.payloads(f"{base}/result")), "what waited out the restart is replayed"
    wait_until(lambda: outbox.stats().depth == 0, 5, "the outbox to drain")
    assert link.stats()["reconnects"] >= 1
    rec.close()


def test_last_will_offline_when_the_station_process_is_killed(mqtt_broker, names, tmp_path):
    host, port = mqtt_broker
    status = f"{names['prefix']}/{names['station']}/status"
    rec = Recorder(host, port, [status])
    rec.wait_subscribed()
    script = textwrap.dedent(f"""
        import time
        from isic_station.messaging.mqtt_link import MqttLink, MqttSettings
        from isic_station.messaging.outbox import Outbox
        link = MqttLink(MqttSettings(host={host!r}, port={port}, prefix={names['prefix']!r},
                                     station_id={names['station']!r}, keepalive_s=60),
                        Outbox({str(tmp_path / 'outbox.sqlite3')!r}))
        link.start()
        print("connected" if link.wait_connected(5) else "not connected", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        rec.wait_for(lambda m: any(b'"online"' in x[1] for x in m), 5, "online")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    rec.wait_for(lambda m: any(b'"offline"' in x[1] for x in m), 5, "the last will")
    assert rec.payloads(status)[-1] == {"state": "offline", "station": names["station"]}
    rec.close()
    publish_once(host, port, status, b"", retain=True)


def _tls_broker(workdir, private_broker):
    """Turn the private broker into a TLS listener that needs a user name and password."""
    def run(*args):
        subprocess.run(args, check=True, capture_output=True, timeout=60, cwd=workdir)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (workdir / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    run("mosquitto_passwd", "-b", "-c", str(workdir / "passwd"), "station", "right-password")
    reconfigure(private_broker, f"allow_anonymous false\npassword_file {workdir}/passwd\n"
                f"cafile {workdir}/ca.pem\ncertfile {workdir}/server.pem\nkeyfile {workdir}/server.key\n")
    return str(workdir / "ca.pem")


def test_tls_with_password_connects_and_never_logs_the_password(private_broker, names, tmp_path, links, caplog):
    ca = _tls_broker(tmp_path, private_broker)
    caplog.set_level(logging.DEBUG)
    wrong = MqttLink(fast_settings(*private_broker.address, names, tls=True, ca_file=ca, username="station",
                                   password="wrong-password", client_id=unique("w-")), Outbox(tmp_path / "w.sqlite3"))
    wrong.start()
    links.append(wrong)
    right = MqttLink(fast_settings(*private_broker.address, names, tls=True, ca_file=ca, username="station",
                                   password="right-password"), Outbox(tmp_path / "r.sqlite3"))
    right.start()
    links.append(right)
    assert right.wait_connected(10), "TLS + password connection"
    time.sleep(0.5)
    assert not wrong.connected
    assert any("refused" in r.getMessage() for r in caplog.records if r.name == "isic_station.messaging.mqtt_link")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "right-password" not in logged and "wrong-password" not in logged


def test_full_quota_during_an_outage_drops_the_oldest_and_health_reports_it(persistent_broker, names, tmp_path,
                                                                           links, caplog):
    base = names["base"]
    rec = session_recorder(persistent_broker, [f"{base}/result", f"{base}/health"])
    persistent_broker.stop()
    small = Outbox(tmp_path / "small.sqlite3", quota_bytes=MIN_QUOTA_BYTES)
    try:
        link = MqttLink(fast_settings(*persistent_broker.address, names), small, health_source=health_part)
        link.start()
        links.append(link)
        caplog.set_level(logging.WARNING, logger="isic_station.messaging.outbox")
        total = 40
        for _ in range(total):
            link.publish_result(sample_result(names["station"], small.next_sequence()))
        kept = small.stats().depth
        dropped = small.stats().dropped_total
        assert kept + dropped == total and dropped > 0
        assert any("dropped" in r.getMessage() for r in caplog.records)
        persistent_broker.start()
        results = rec.wait_count(f"{base}/result", kept, timeout=15)
        assert [r["sequence"] for r in results] == list(range(dropped + 1, total + 1)), "the newest survive"
        health = rec.wait_count(f"{base}/health", 1)[-1]
        assert validation_errors(health, "health") == []
        assert health["outbox"]["dropped_total"] == dropped
        wait_until(lambda: small.stats().depth == 0, 5, "the outbox to drain")
    finally:
        link.stop(timeout=2.0)
        small.close()
    rec.close()


def test_no_broker_never_blocks_publish_or_stop(names, outbox):
    link = MqttLink(fast_settings("127.0.0.1", free_port(), names), outbox)
    started = time.monotonic()
    link.start()
    for _ in range(5):
        link.publish_result(sample_result(names["station"], outbox.next_sequence()))
    time.sleep(0.5)  # a few refused connection attempts
    link.stop(timeout=1.0)
    assert time.monotonic() - started < 3.0
    assert not link.connected and outbox.stats().depth == 5, "the results wait for the next start"


def test_reconnect_attempts_back_off_up_to_the_maximum(names, outbox):
    """A listener that hangs up on every connection (a broker that is not ready yet) sees the link's
    attempts spaced by a doubling delay, capped at reconnect_max_s."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    attempts = []
    link = MqttLink(fast_settings("127.0.0.1", server.getsockname()[1], names, reconnect_min_s=0.1,
                                  reconnect_max_s=0.4), outbox)
    link.start()
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            attempts.append(time.monotonic())
            conn.close()
    finally:
        link.stop(timeout=1.0)
        server.close()
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert len(attempts) >= 4, f"attempts at {attempts}"
    assert 0.05 <= gaps[0] < 0.3 and gaps[1] >= 0.15 and gaps[2] >= 0.3, f"gaps {gaps}"
    assert max(gaps) < 0.4 + 0.3, f"gaps {gaps}: the delay is capped"

"""`isic-station broker-acl` on a real Mosquitto started with the files it writes: no anonymous client, and
each role - station, viewer, operator, technician - can do exactly its part and nothing more.

The station is the real `MqttLink` with a `CommandRouter` whose handlers record what ran; the people are
MQTT 5 clients, so the broker's refusals are visible as PUBACK reason codes (Not authorized, 0x87).
"""

import base64
import json
import subprocess
import sys
import threading
import time
from typing import Dict, List

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from isic_station.messaging.commands import COMMAND_NAMES, CommandRouter
from isic_station.messaging.mqtt_link import MqttLink
from isic_station.messaging.outbox import Outbox
from isic_station.tools.broker_acl import ROLE_COMMANDS, conf_text, password_line, station_user, write_broker_files

from .conftest import fast_settings, reconfigure
from .mqtt_helpers import sample_result, unique, wait_until

ROLE_USERS = {"viewer": "isic-viewer", "operator": "isic-operator", "technician": "isic-technician"}
NOT_AUTHORIZED = 0x87


class Client:
    """An MQTT 5 client of one user: records messages and the reason code of each PUBACK."""

    def __init__(self, broker, user: str, password: str, subscribe: List[str] = ()) -> None:
        self.messages: List[tuple] = []
        self.acks: Dict[int, int] = {}
        self.connack = threading.Event()
        self.refused = None
        self._lock = threading.Condition()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=unique("acl-"),
                                  protocol=paho.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self._record(m.topic, bytes(m.payload))
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *a: self.connack.set()
        self._subscribe = list(subscribe)
        self.client.connect(*broker.address, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.refused = reason
            self.connack.set()
        elif self._subscribe:
            client.subscribe([(t, 1) for t in self._subscribe])
        else:
            self.connack.set()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._lock:
            self.acks[mid] = reason.value
            self._lock.notify_all()

    def _record(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; the PUBACK's reason code (0 = accepted)."""
        info = self.client.publish(topic, payload, qos=1)
        with self._lock:
            assert self._lock.wait_for(lambda: info.mid in self.acks, 5.0), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def acl_broker(private_broker, tmp_path, names):
    folder = tmp_path / "broker-files"
    passwords = write_broker_files(folder, names["prefix"], [names["station"]], ROLE_USERS, names["ha_prefix"])
    reconfigure(private_broker, conf_text(folder))
    return private_broker, passwords


def test_password_lines_are_what_mosquitto_passwd_writes(tmp_path) -> None:
    """Same `$7$` format: the line mosquitto_passwd writes for a password verifies with our hashing."""
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "alice", "s3cret"], check=True, capture_output=True)
    user, _, rest = path.read_text().strip().partition(":")
    _, _, iterations, salt, _ = rest.split("$")
    ours = password_line("alice", "s3cret", iterations=int(iterations), salt=base64.b64decode(salt))
    assert ours == f"{user}:{rest}"


def test_each_role_can_do_exactly_its_part(acl_broker, names, tmp_path) -> None:
    broker, passwords = acl_broker
    base = names["base"]
    ran: List[str] = []
    router = CommandRouter({name: (lambda p, n=name: ran.append(n) or {}) for name in COMMAND_NAMES})
    user = station_user(names["station"])
    settings = fast_settings(*broker.address, names, username=user, password=passwords[user])
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    link = MqttLink(settings, outbox, commands=router, ha_fibres=["cotton"])
    link.start()
    people = {role: Client(broker, ROLE_USERS[role], passwords[ROLE_USERS[role]], [f"{base}/#"])
              for role in ROLE_USERS}
    try:
        assert link.wait_connected(10), "the station logs in with its own user"
        for person in people.values():
            assert person.connack.wait(5) and person.refused is None
        anonymous = Client(broker, "", "")
        wrong = Client(broker, ROLE_USERS["operator"], "not-the-password")
        assert anonymous.connack.wait(5) and anonymous.refused is not None, "anonymous clients are refused"
        assert wrong.connack.wait(5) and wrong.refused is not None, "a wrong password is refused"
        # The station publishes its results; every role reads them.
        doc = sample_result(names["station"], outbox.next_sequence())
        link.publish_result(doc)
        for role, person in people.items():
            wait_until(lambda p=person: any(t == f"{base}/result" for t, _ in p.messages), 10, f"{role} reads results")
        # Each role sends every command: only its own reach the station, the others are refused by the broker.
        for role, person in people.items():
            for name in COMMAND_NAMES:
                payload = {"reference": "dark"} if name == "calibrate" else {}
                if name == "set_lot":
                    payload = {"lot_id": "L1", "composition": {"cotton": 1.0}}
                code = person.publish(f"{base}/cmd/{name}", json.dumps(dict(payload, transaction=role)).encode())
                allowed = name in ROLE_COMMANDS.get(role, ())
                assert (code == 0) == allowed and (allowed or code == NOT_AUTHORIZED), (role, name, code)
        expected = sorted(n for r in ROLE_USERS for n in ROLE_COMMANDS.get(r, ()))
        wait_until(lambda: len(ran) >= len(expected), 10, "the allowed commands to run")
        assert sorted(ran) == expected
        # Nobody but the station may publish on its topics (a forged result, a fake `offline`).
        for role, person in people.items():
            for topic in ("result", "status", "alarm", "cmd/measure/response"):
                assert person.publish(f"{base}/{topic}", b'{"forged": true}') == NOT_AUTHORIZED, (role, topic)
        assert not any(b"forged" in payload for p in people.values() for _, payload in p.messages)
        time.sleep(0.3)  # a refused command would have arrived by now
        assert sorted(ran) == expected, "no command ran twice or from a refused publish"
    finally:
        for person in people.values():
            person.close()
        link.stop(timeout=1.0)
        outbox.close()


def test_the_command_line_writes_the_files_and_keeps_secrets(tmp_path) -> None:
    out = tmp_path / "files"
    command = [sys.executable, "-m", "isic_station.cli", "broker-acl", "--station", "line-3", "--station", "line-4",
               "--out", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "mqtt.username = \"isic-line-3\"" in first.stdout
    secret = (out / "secrets" / "isic-line-3").read_text()
    for private in (out / "passwd", out / "secrets" / "isic-line-3"):
        assert private.stat().st_mode & 0o077 == 0, f"{private} is readable by others"
    acl = (out / "acl").read_text()
    assert "user isic-line-4\n" in acl and "topic write isic/line-4/cmd/calibrate" in acl
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    assert (out / "secrets" / "isic-line-3").read_text() == secret, "secrets are kept on a second run"

"""Command validation and dispatch, without a broker (the MQTT round trip is in test_mqtt_link)."""

import json
import threading

import pytest

from isic_station.daemon.command_handlers import CommandHandlers
from isic_station.daemon.spec_check import LotSpec
from isic_station.messaging.commands import COMMAND_NAMES, CommandError, CommandRouter
from isic_station.schemas import SCHEMA_DIR, load_schema, validation_errors

from .mqtt_helpers import wait_until


def make_router(calls):
    def set_lot(payload):
        spec = LotSpec.from_dict(payload)
        calls.append(("set_lot", spec))
        return {"lot_id": spec.lot_id}

    def calibrate(payload):
        if payload["reference"] == "white":
            raise CommandError("no white tile detected under the probe")
        return {"reference": payload["reference"]}

    def measure(payload):
        raise RuntimeError("camera exploded")

    return CommandRouter({"set_lot": set_lot, "calibrate": calibrate, "measure": measure,
                          "status": lambda p: {"mode": "triggered"}})


def answer(router, name, payload):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = router.handle(name, raw)
    assert validation_errors(response, "command_response") == []
    return response


def test_valid_command_runs_its_handler_and_echoes_transaction():
    calls = []
    router = make_router(calls)
    response = answer(router, "set_lot", {"transaction": "abc", "lot_id": "L7",
                                          "composition": {"cotton": 0.7, "polyester": 0.3}})
    assert response == {"status": "ok", "data": {"lot_id": "L7"}, "error": None, "transaction": "abc"}
    assert calls[0][1].composition == {"cotton": 0.7, "polyester": 0.3}


def test_empty_payload_is_an_empty_object():
    assert answer(make_router([]), "status", b"")["data"] == {"mode": "triggered"}


@pytest.mark.parametrize("name, payload, needle", [
    ("set_lot", b"{not json", "not valid JSON"),
    ("set_lot", b"[1, 2]", "JSON object"),
    ("set_lot", {"transaction": 5, "composition": {"cotton": 1.0}}, "'lot_id' is a required property"),
    ("calibrate", {"transaction": 5, "reference": "grey"}, "reference"),
    ("status", {"transaction": 5, "verbose": True}, "verbose"),
    ("reboot", {"transaction": 5}, "unknown command 'reboot'"),
])
def test_bad_requests_are_answered_with_an_error_naming_the_cause(name, payload, needle):
    response = answer(make_router([]), name, payload)
    assert response["status"] == "error" and response["data"] is None
    assert needle in response["error"]
    if isinstance(payload, dict):
        assert response["transaction"] == 5


def test_handler_refusal_and_handler_crash_become_error_responses():
    router = make_router([])
    refused = answer(router, "calibrate", {"reference": "white"})
    assert refused["status"] == "error" and "white tile" in refused["error"]
    crashed = answer(router, "measure", {"transaction": 1})
    assert crashed["status"] == "error" and "RuntimeError" in crashed["error"] and "camera exploded" in crashed["error"]


def test_command_without_handler_is_refused():
    response = answer(make_router([]), "reload_model", {})
    assert response["status"] == "error" and "not supported" in response["error"]


def test_set_lot_sum_error_reaches_the_caller():
    response = answer(make_router([]), "set_lot", {"lot_id": "L", "composition": {"cotton": 0.5, "polyester": 0.4}})
    assert response["status"] == "error" and "sum to 0.9" in response["error"]


def test_unknown_handler_names_are_rejected():
    with pytest.raises(ValueError, match="reboot"):
        CommandRouter({"reboot": lambda p: None})


def test_the_command_schema_files_are_exactly_the_registrys_commands():
    envelopes = {"command_request", "command_response"}
    files = {p.name[:-len(".schema.json")] for p in SCHEMA_DIR.glob("command_*.schema.json")} - envelopes
    assert files == {f"command_{name}" for name in COMMAND_NAMES}
    assert {"measure", "set_lot", "calibrate", "reload_model", "status"} <= set(COMMAND_NAMES)
    for name in COMMAND_NAMES:
        assert load_schema(f"command_{name}")["title"] == name


def test_a_command_is_its_schema_file_and_one_handler_method():
    """A new command: `command_<name>.schema.json` and a method `<name>` on CommandHandlers (ARCHITECTURE.md)."""
    methods = {name for name, value in vars(CommandHandlers).items()
               if callable(value) and not name.startswith("_")} - {"handlers"}
    assert methods == set(COMMAND_NAMES), "each handler method is a command with a schema file, and back"
    handlers = CommandHandlers.__new__(CommandHandlers).handlers()  # naming them needs no parts
    assert list(handlers) == list(COMMAND_NAMES) and all(callable(h) for h in handlers.values())


def test_a_command_without_its_handler_method_is_refused_naming_it():
    class WithoutStatus(CommandHandlers):
        status = None

    with pytest.raises(ValueError, match=r"\['status'\] have a schema but no handler method"):
        WithoutStatus.__new__(WithoutStatus).handlers()


def test_worker_runs_handlers_off_the_submitting_thread_and_answers_busy_when_full():
    release = threading.Event()
    threads = []
    answers = []
    done = threading.Event()

    def slow_status(payload):
        threads.append(threading.current_thread().name)
        release.wait(5)
        return {}

    def respond(name, response):
        answers.append(response)
        if len(answers) == 3:
            done.set()

    router = CommandRouter({"status": slow_status}, queue_size=1)
    router.start(respond)
    try:
        router.submit("status", b'{"transaction": 1}')
        wait_until(lambda: bool(threads), 5, "the worker to take the first request")
        router.submit("status", b'{"transaction": 2}')   # waits in the queue
        router.submit("status", b'{"transaction": 3}')   # queue full: refused at once
        assert answers and answers[0]["transaction"] == 3 and "busy" in answers[0]["error"]
        release.set()
        assert done.wait(5), f"answers: {answers}"
        assert [a["transaction"] for a in answers[1:]] == [1, 2]
        assert threads[0] == "isic-commands" and threads[0] != threading.current_thread().name
    finally:
        release.set()
        router.stop(timeout=5)


def test_transaction_of_the_wrong_type_is_named_and_not_echoed():
    response = answer(make_router([]), "status", {"transaction": [1, 2]})
    assert response["status"] == "error" and response["transaction"] is None
    assert response["error"].startswith("invalid status payload: transaction:")


def test_worker_survives_a_failure_outside_the_handler(monkeypatch):
    answers = []
    done = threading.Event()

    def respond(name, response):
        answers.append(response)
        if len(answers) == 2:
            done.set()

    router = CommandRouter({"status": lambda p: {"alive": True}})
    original = router.handle
    calls = []

    def handle_failing_once(name, raw):
        calls.append(name)
        if len(calls) == 1:
            raise RecursionError("maximum recursion depth exceeded (injected)")
        return original(name, raw)

    monkeypatch.setattr(router, "handle", handle_failing_once)
    router.start(respond)
    try:
        router.submit("status", b"{}")
        router.submit("status", b"{}")
        assert done.wait(5), f"answers: {answers}"
    finally:
        router.stop(timeout=5)
    assert answers[0]["status"] == "error" and "RecursionError" in answers[0]["error"]
    assert answers[1] == {"status": "ok", "data": {"alive": True}, "error": None, "transaction": None}

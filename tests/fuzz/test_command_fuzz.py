"""Fuzzing the command payloads a client sends on `<prefix>/<station>/cmd/<name>`: whatever arrives (bytes,
JSON of any shape, NaN/Infinity tokens, huge numbers), the router answers with a response that follows
the `command_response` schema and is strict JSON; it never raises and never hangs.

The router is the real `CommandRouter`; the handlers do what the station's do with a validated payload
(`set_lot` builds a `LotSpec` and refuses with CommandError on InvalidLotSpec, as `Station.cmd_set_lot`).
"""

import json
import math
from datetime import timedelta
from typing import Any, Dict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isic_station.daemon.spec_check import InvalidLotSpec, LotSpec, check_composition
from isic_station.messaging.commands import COMMAND_NAMES, CommandError, CommandRouter, parse_request
from isic_station.schemas import validation_errors

FIBRES = ("cotton", "polyester", "wool")
FUZZ = settings(max_examples=300, deadline=timedelta(milliseconds=500),
                suppress_health_check=[HealthCheck.too_slow])


def set_lot(payload: Dict[str, Any]) -> Dict[str, Any]:
    try:
        spec = LotSpec.from_dict(payload, known_fibres=FIBRES)
    except InvalidLotSpec as exc:
        raise CommandError(str(exc)) from None
    return spec.to_dict()


ROUTER = CommandRouter({
    "measure": lambda p: {"sample_id": p.get("sample_id")},
    "set_lot": set_lot,
    "calibrate": lambda p: {"reference": p["reference"]},
    "reload_model": lambda p: {},
    "status": lambda p: {},
})

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)
fractions = st.one_of(st.floats(), st.floats(0, 1), st.integers(-2, 2), st.text(max_size=4))
keyed = st.fixed_dictionaries({}, optional={
    "transaction": st.one_of(st.none(), st.text(max_size=20), st.integers(), st.floats(), st.booleans()),
    "sample_id": st.one_of(st.text(max_size=200), json_values),
    "lot_id": st.one_of(st.text(max_size=200), json_values),
    "composition": st.one_of(st.dictionaries(st.sampled_from(FIBRES + ("silk", "")), fractions, max_size=4),
                             json_values),
    "tolerance_pp": st.one_of(st.floats(), st.integers(), json_values),
    "reference": st.one_of(st.sampled_from(["dark", "white", "grey"]), json_values),
})
payloads = st.one_of(
    st.binary(max_size=300),
    keyed.map(lambda d: json.dumps(d).encode()),  # json.dumps writes NaN/Infinity tokens, as a sloppy client would
    json_values.map(lambda v: json.dumps(v).encode()),
)


def assert_good_response(answer: Dict[str, Any]) -> None:
    assert validation_errors(answer, "command_response") == [], answer
    json.dumps(answer, allow_nan=False)  # strict JSON: what any subscriber can parse
    assert (answer["status"] == "ok") == (answer["error"] is None)


@FUZZ
@given(name=st.one_of(st.sampled_from(COMMAND_NAMES), st.text(max_size=12)), raw=payloads)
def test_any_payload_gets_a_schema_valid_strict_json_response(name: str, raw: bytes) -> None:
    payload, transaction, error = parse_request(name, raw)
    assert (payload is None) != (error is None)
    assert_good_response(ROUTER.handle(name, raw))


@FUZZ
@given(raw=payloads)
def test_an_accepted_lot_spec_is_finite_and_checks_to_strict_json(raw: bytes) -> None:
    payload, _, error = parse_request("set_lot", raw)
    if error is not None:
        return
    try:
        spec = LotSpec.from_dict(payload, known_fibres=FIBRES)
    except InvalidLotSpec:
        return
    assert math.isfinite(spec.tolerance_pp) and all(math.isfinite(v) for v in spec.composition.values()), spec
    json.dumps(check_composition(spec, {"cotton": 0.5, "polyester": 0.5}), allow_nan=False)


@pytest.mark.parametrize("raw", [b'{"lot_id": "L1", "composition": {"cotton": 1}, "tolerance_pp": NaN}',
                                 b'{"lot_id": "L1", "composition": {"cotton": NaN}}',
                                 b'{"transaction": NaN}', b"[" * 100000, b'{"a":' * 50000])
def test_nan_tokens_and_deep_nesting_are_refused(raw: bytes) -> None:
    answer = ROUTER.handle("set_lot", raw)
    assert answer["status"] == "error", answer
    assert_good_response(answer)


RAN = []
COUNTING = CommandRouter({name: (lambda p, n=name: RAN.append(n) or {}) for name in COMMAND_NAMES},
                         max_payload_bytes=4096)
sized = st.tuples(st.integers(0, 20_000), st.sampled_from(["x", "\n", "\x1b[31m", "é", "\x00"])).map(
    lambda t: json.dumps({"sample_id": t[1] * t[0], "transaction": 7}).encode())


@FUZZ
@given(name=st.one_of(st.sampled_from(COMMAND_NAMES), st.text(max_size=12)), raw=st.one_of(payloads, sized),
       retained=st.booleans())
def test_retained_or_oversized_payloads_never_run_and_answers_stay_short(name: str, raw: bytes,
                                                                         retained: bool) -> None:
    RAN.clear()
    answer = COUNTING.handle(name, raw, retained=retained)
    if retained and not raw:
        assert answer is None and RAN == [], "an empty retained payload (a user clearing the topic) is ignored"
        return
    assert answer is not None
    assert_good_response(answer)
    if retained or len(raw) > COUNTING.max_payload_bytes:
        assert answer["status"] == "error" and RAN == [], answer
    assert answer["error"] is None or (len(answer["error"]) <= 500 and not any(
        ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in answer["error"])), answer["error"]

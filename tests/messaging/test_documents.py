"""Result, alarm, health, status and response documents against their schemas; the lot spec check."""

import copy
import uuid

import pytest

from isic_station.daemon.spec_check import InvalidLotSpec, LotSpec, check_composition
from isic_station.messaging.results import RESULT_FLAGS, build_alarm, build_health, out_of_spec_alarm, utc_iso
from isic_station.schemas import load_schema, validation_errors

from .mqtt_helpers import health_part, sample_result


def test_result_validates_and_carries_the_contract_keys():
    doc = sample_result("st1", 7)
    assert validation_errors(doc, "result") == []
    assert uuid.UUID(doc["message_id"]).version == 4
    assert doc["measured_at"].endswith("Z") and doc["sequence"] == 7 and doc["replayed"] is False
    assert doc["spec"] is None and doc["flags"] == ["low_signal"]


@pytest.mark.parametrize("key", ["message_id", "sequence", "composition", "model", "timings_ms", "replayed"])
def test_result_schema_rejects_a_missing_key(key):
    doc = sample_result("st1", 1)
    del doc[key]
    assert any(key in e for e in validation_errors(doc, "result"))


def test_result_schema_rejects_bad_values():
    doc = sample_result("st1", 1)
    doc["composition"]["cotton"] = 1.5
    doc["flags"] = ["smudged"]
    doc["model"]["sha256"] = "nothex"
    errors = " | ".join(validation_errors(doc, "result"))
    assert "composition.cotton" in errors and "flags.0" in errors and "model.sha256" in errors


def test_unknown_flag_is_refused_by_the_builder():
    with pytest.raises(ValueError, match="smudged"):
        sample_result_with_flags(["smudged"])


def test_every_schema_flag_is_built_in_the_schemas_order_and_validates():
    doc = sample_result_with_flags(list(reversed(RESULT_FLAGS)))
    assert doc["flags"] == list(load_schema("result")["properties"]["flags"]["items"]["enum"])
    assert validation_errors(doc, "result") == []


def sample_result_with_flags(flags):
    doc = sample_result("st1", 1)
    from isic_station.messaging.results import build_result
    return build_result(station="st1", sequence=1, composition=doc["composition"], blend=doc["blend"],
                        confidence=0.5, uncertainty=doc["uncertainty"], flags=flags, model=doc["model"],
                        backend="acl", timings_ms=doc["timings_ms"])


def test_in_spec_lot():
    spec = LotSpec.from_dict({"lot_id": "L1", "composition": {"cotton": 0.6, "polyester": 0.4}})
    assert spec.tolerance_pp == 5.0
    check = check_composition(spec, {"cotton": 0.63, "polyester": 0.37})
    assert check["in_spec"] and check["out_of_spec_fibres"] == []
    assert check["deviation_pp"] == {"cotton": 3.0, "polyester": -3.0}
    doc = sample_result("st1", 1, composition={"cotton": 0.63, "polyester": 0.37}, spec=check, lot_id="L1")
    assert validation_errors(doc, "result") == []
    assert "out_of_spec" not in doc["flags"] and out_of_spec_alarm(doc) is None


def test_out_of_spec_lot_flags_the_result_and_raises_an_alarm():
    spec = LotSpec.from_dict({"lot_id": "L2", "composition": {"cotton": 0.5, "polyester": 0.5}, "tolerance_pp": 3})
    check = check_composition(spec, {"cotton": 0.58, "polyester": 0.38, "wool": 0.04})
    assert not check["in_spec"]
    assert check["out_of_spec_fibres"] == ["cotton", "polyester", "wool"]
    assert check["deviation_pp"]["wool"] == 4.0, "an undeclared fibre counts as declared 0 %"
    doc = sample_result("st1", 9, composition={"cotton": 0.58, "polyester": 0.38, "wool": 0.04},
                        spec=check, lot_id="L2")
    assert "out_of_spec" in doc["flags"]
    alarm = out_of_spec_alarm(doc)
    assert validation_errors(alarm, "alarm") == []
    assert alarm["kind"] == "out_of_spec" and alarm["details"]["sequence"] == 9
    assert alarm["message"] == "lot L2 out of spec: polyester off by -12.0 pp (tolerance ±3 pp)"


def test_deviation_exactly_at_the_tolerance_is_in_spec():
    spec = LotSpec("L", {"cotton": 0.5, "polyester": 0.5}, 5.0)
    assert check_composition(spec, {"cotton": 0.55, "polyester": 0.45})["in_spec"]
    assert not check_composition(spec, {"cotton": 0.5501, "polyester": 0.4499})["in_spec"]


@pytest.mark.parametrize("doc, match", [
    ({"lot_id": "L", "composition": {"cotton": 0.6, "polyester": 0.3}}, "sum to 0.9"),
    ({"lot_id": "L", "composition": {"cotton": 60, "polyester": 40}}, "composition.cotton"),
    ({"composition": {"cotton": 1.0}}, "lot_id"),
    ({"lot_id": "L", "composition": {"cotton": 1.0}, "tolerance_pp": 0}, "tolerance_pp"),
    ({"lot_id": "L", "composition": {"silk": 1.0}}, "unknown fibre"),
])
def test_invalid_lot_specs_name_the_field(doc, match):
    with pytest.raises(InvalidLotSpec, match=match):
        LotSpec.from_dict(doc, known_fibres=["cotton", "polyester", "wool"])


def test_lot_spec_round_trips():
    spec = LotSpec("L", {"cotton": 0.65, "polyester": 0.35}, 4.0)
    assert LotSpec.from_dict(spec.to_dict()) == spec


def test_health_and_alarm_documents_validate():
    health = build_health(station="st1", outbox={"depth": 0, "oldest_age_s": None, "bytes": 0,
                                                 "quota_bytes": 1 << 20, "dropped_total": 0},
                          mqtt={"connected": True, "reconnects": 0, "published_total": 5}, **health_part())
    assert validation_errors(health, "health") == []
    broken = copy.deepcopy(health)
    broken["devices"]["camera"]["state"] = "on fire"
    assert validation_errors(broken, "health")
    alarm = build_alarm(station="st1", kind="device_fault", severity="critical",
                        message="spectrometer on /dev/ttyUSB0 stopped answering", details={"device": "spectrometer"})
    assert validation_errors(alarm, "alarm") == []


def test_utc_iso_refuses_naive_times():
    from datetime import datetime
    with pytest.raises(ValueError, match="naive"):
        utc_iso(datetime(2026, 1, 1))
    assert utc_iso().endswith("Z")

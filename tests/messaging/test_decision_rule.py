"""The decision rule on calibrated intervals, per result and per lot (spec_check), and its documents."""

import pytest

from isic_station.daemon.spec_check import LotSpec, LotSummary, check_composition, judge
from isic_station.messaging.results import build_result, out_of_spec_alarm, refer_to_lab_alarm
from isic_station.schemas import validation_errors

from .mqtt_helpers import sample_result

SPEC = LotSpec("L1", {"cotton": 0.6, "polyester": 0.4}, tolerance_pp=5.0)


def result_with(spec, flags=(), interval=None):
    doc = sample_result("st1", 3)
    return build_result(station="st1", sequence=3, composition=doc["composition"], blend=doc["blend"],
                        confidence=0.9, uncertainty=doc["uncertainty"], flags=flags, model=doc["model"],
                        backend="onnxruntime", timings_ms=doc["timings_ms"], sample_id="S-3", lot_id="L1",
                        spec=spec, interval_95=interval, unknown_fibre_score=1.5 if interval else None)


@pytest.mark.parametrize("intervals, verdict, straddling", [
    ({"cotton": [0.57, 0.64], "polyester": [0.36, 0.43]}, "pass", []),
    ({"cotton": [0.66, 0.70], "polyester": [0.30, 0.34]}, "fail", []),
    ({"cotton": [0.53, 0.67], "polyester": [0.33, 0.47]}, "undetermined", ["cotton", "polyester"]),
    ({"cotton": [0.58, 0.62], "polyester": [0.36, 0.40], "nylon": [0.0, 0.06]}, "undetermined", ["nylon"]),
    ({"cotton": [0.55, 0.65], "polyester": [0.35, 0.45]}, "pass", []),  # exactly at the limits
])
def test_result_verdict_follows_the_whole_interval(intervals, verdict, straddling):
    decision = judge(SPEC, intervals)
    assert decision["verdict"] == verdict and decision["straddling_fibres"] == straddling


def test_a_straddling_result_is_undetermined_and_referred_to_the_lab():
    interval = {"cotton": [0.52, 0.66], "polyester": [0.34, 0.48]}
    spec = check_composition(SPEC, {"cotton": 0.59, "polyester": 0.41}, interval)
    assert spec["in_spec"] and spec["verdict"] == "undetermined" and spec["refer_to_lab"]
    assert spec["rule"] == "interval_95"
    doc = result_with(spec, interval=interval)
    assert validation_errors(doc, "result") == []
    assert "refer_to_lab" in doc["flags"] and "out_of_spec" not in doc["flags"]
    assert out_of_spec_alarm(doc) is None
    alarm = refer_to_lab_alarm(doc)
    assert validation_errors(alarm, "alarm") == []
    assert alarm["kind"] == "refer_to_lab" and "straddles" in alarm["message"] and "cotton" in alarm["message"]


def test_a_failing_interval_flags_out_of_spec_and_alarms():
    interval = {"cotton": [0.70, 0.78], "polyester": [0.22, 0.30]}
    spec = check_composition(SPEC, {"cotton": 0.74, "polyester": 0.26}, interval)
    doc = result_with(spec, interval=interval)
    assert spec["verdict"] == "fail" and "out_of_spec" in doc["flags"] and "refer_to_lab" not in doc["flags"]
    assert out_of_spec_alarm(doc)["kind"] == "out_of_spec" and refer_to_lab_alarm(doc) is None


def test_without_intervals_the_point_estimate_decides():
    spec = check_composition(SPEC, {"cotton": 0.63, "polyester": 0.37})
    assert spec["rule"] == "point_estimate" and spec["verdict"] == "pass" and not spec["refer_to_lab"]
    assert check_composition(SPEC, {"cotton": 0.7, "polyester": 0.3})["verdict"] == "fail"


def test_unknown_fibre_and_uncalibrated_flags_refer_to_the_lab_with_the_reason():
    doc = result_with(None, flags=["unknown_fibre"], interval={"cotton": [0.5, 0.7], "polyester": [0.3, 0.5]})
    assert "refer_to_lab" in doc["flags"] and validation_errors(doc, "result") == []
    alarm = refer_to_lab_alarm(doc, uncalibrated_flags=["stale_reference"])
    assert "does not know" in alarm["message"] and "stale_reference" in alarm["message"]


def lot_of(values, spec, systematic=0.01, interval_half=0.05):
    summary = LotSummary(spec, since="2026-12-01T10:00:00.000Z")
    for cotton in values:
        composition = {"cotton": cotton, "polyester": 1.0 - cotton}
        interval = {f: [max(0.0, v - interval_half), min(1.0, v + interval_half)] for f, v in composition.items()}
        verdict = judge(spec, interval)["verdict"]
        summary.add(composition, {"cotton": systematic, "polyester": systematic}, interval, verdict)
    return summary.to_dict("st1", "2026-12-01T10:05:00.000Z")


def test_a_lot_matching_its_declaration_passes_and_the_document_validates():
    doc = lot_of([0.59, 0.61, 0.60, 0.62, 0.58] * 4, SPEC)
    assert validation_errors(doc, "lot") == []
    assert doc["n"] == 20 and doc["mean"]["cotton"] == pytest.approx(0.6, abs=1e-4)
    assert doc["verdict"] == "pass" and not doc["refer_to_lab"] and doc["reasons"] == []
    # the interval of the mean keeps the systematic part: never narrower than t * systematic
    low, high = doc["interval_95"]["cotton"]
    assert high - low >= 2 * 1.96 * 0.01 - 1e-4


def test_a_straddling_lot_is_undetermined():
    # mean 0.645: 4.5 pp off, inside 5 pp, but the interval of the mean crosses 0.65
    doc = lot_of([0.63, 0.66, 0.64, 0.65] * 5, SPEC)
    assert doc["mean"]["cotton"] == pytest.approx(0.645, abs=1e-4)
    low, high = doc["interval_95"]["cotton"]
    assert low < 0.65 < high
    assert doc["verdict"] == "undetermined" and doc["refer_to_lab"] and "cotton" in doc["straddling_fibres"]
    assert "straddles" in doc["reasons"][0] and validation_errors(doc, "lot") == []


def test_a_lot_far_off_fails():
    doc = lot_of([0.70, 0.71, 0.69, 0.70] * 5, SPEC)
    assert doc["verdict"] == "fail" and doc["failing_fibres"] == ["cotton", "polyester"]


def test_a_lot_of_one_uses_the_result_interval_and_an_empty_lot_is_undetermined():
    assert lot_of([0.6], SPEC, interval_half=0.08)["interval_95"]["cotton"] == [pytest.approx(0.52),
                                                                                 pytest.approx(0.68)]
    empty = LotSummary(SPEC, since="2026-12-01T10:00:00.000Z").to_dict("st1", "2026-12-01T10:00:00.000Z")
    assert empty["n"] == 0 and empty["verdict"] == "undetermined" and validation_errors(empty, "lot") == []


def test_a_lot_with_an_unknown_fibre_result_is_referred():
    summary = LotSummary(SPEC, since="2026-12-01T10:00:00.000Z")
    for _ in range(3):
        summary.add({"cotton": 0.6, "polyester": 0.4}, {}, {"cotton": [0.58, 0.62], "polyester": [0.38, 0.42]},
                    "pass", flags=["unknown_fibre"])
    doc = summary.to_dict("st1", "2026-12-01T10:00:00.000Z")
    assert doc["verdict"] == "pass" and doc["refer_to_lab"] and doc["unknown_fibre_results"] == 3


@pytest.mark.parametrize("flag, alarm_words, count_key, problem, reason", [
    ("outside_trained_range", "condition_problem", "outside_trained_results",
     "room temperature 9.0 degC is outside the 18-35 degC the model was trained in", "outside the conditions"),
    ("no_room_reading", "room_problem", "unread_room_results",
     "no room temperature reading, and model 9t takes the room as an input", "without the room temperature"),
    ("uncalibrated_settings", "settings_problem", "uncalibrated_settings_results",
     "the uncertainty calibration was fitted on richer measurements than this station takes (coadd 4 -> 1)",
     "fewer scans, frames or field"),
])
def test_a_result_the_calibration_cannot_vouch_for_refers_result_and_lot(flag, alarm_words, count_key, problem,
                                                                         reason):
    """A room outside the trained range, no reading for a model taking the room, or leaner settings than the
    calibration's: the result and its lot are referred, the alarm names the cause (a generic one without its
    words), and a lot kept before the count existed reads 0."""
    doc = result_with(None, flags=[flag], interval={"cotton": [0.5, 0.7], "polyester": [0.3, 0.5]})
    assert "refer_to_lab" in doc["flags"] and validation_errors(doc, "result") == []
    assert problem in refer_to_lab_alarm(doc, **{alarm_words: problem})["message"]
    assert reason in refer_to_lab_alarm(doc)["message"]
    summary = LotSummary(SPEC, since="2026-12-01T10:00:00.000Z")
    for flags in ([], [flag, "signal_only"], ["signal_only"]):
        summary.add({"cotton": 0.6, "polyester": 0.4}, {}, {"cotton": [0.58, 0.62], "polyester": [0.38, 0.42]},
                    "pass", flags=flags)
    lot = summary.to_dict("st1", "2026-12-01T10:00:00.000Z")
    assert lot["verdict"] == "pass" and lot["refer_to_lab"] and lot[count_key] == 1
    assert any(r.startswith("1 result(s) ") and reason in r for r in lot["reasons"])
    assert validation_errors(lot, "lot") == []
    assert LotSummary.from_state(summary.state()).to_dict("st1", "2026-12-01T10:00:00.000Z")[count_key] == 1
    before = {k: v for k, v in summary.state().items() if k != count_key}  # kept before the count
    assert not LotSummary.from_state(before).to_dict("st1", "2026-12-01T10:00:00.000Z")["refer_to_lab"]


def test_the_lot_takes_the_systematic_error_of_the_blend_most_results_were_read_as():
    summary = LotSummary(SPEC, since="2026-12-01T10:00:00.000Z")
    small, large = {"cotton": 0.005, "polyester": 0.005}, {"cotton": 0.07, "polyester": 0.01}
    for i in range(20):
        cotton = 0.6 + (0.01 if i % 2 else -0.01)
        misread = i == 7  # one piece read as a three-fibre blend, with its far larger bias
        summary.add({"cotton": cotton, "polyester": 1.0 - cotton}, large if misread else small,
                    {"cotton": [cotton - 0.04, cotton + 0.04], "polyester": [0.36, 0.44]}, "pass",
                    blend="cotton/linen/polyester" if misread else "cotton/polyester")
    doc = summary.to_dict("st1", "2026-12-01T10:05:00.000Z")
    assert doc["blend"] == "cotton/polyester" and doc["systematic"]["cotton"] == 0.005
    assert doc["verdict"] == "pass" and validation_errors(doc, "lot") == []


def test_one_dim_piece_does_not_lend_a_bright_lot_the_systematic_error_of_dark_fabric():
    """The lot's systematic part is the mean of its results' (a mean of pieces keeps at most the mean of
    their systematic errors), not the largest: 19 bright pieces at 0.5 pp and one dark at 6 pp pass."""
    summary = LotSummary(SPEC, since="2026-12-01T10:00:00.000Z")
    bright, dark = {"cotton": 0.005, "polyester": 0.005}, {"cotton": 0.06, "polyester": 0.06}
    for i in range(20):
        cotton = 0.61 + (0.01 if i % 2 else -0.01)
        summary.add({"cotton": cotton, "polyester": 1.0 - cotton}, dark if i == 4 else bright,
                    {"cotton": [cotton - 0.04, cotton + 0.04], "polyester": [0.35, 0.43]}, "pass",
                    blend="cotton/polyester")
    doc = summary.to_dict("st1", "2026-12-01T10:05:00.000Z")
    assert doc["systematic"]["cotton"] == pytest.approx((19 * 0.005 + 0.06) / 20, abs=1e-4)
    assert doc["verdict"] == "pass"  # with the largest (6 pp) the interval would reach past 0.65


def test_a_lot_kept_before_the_mean_reads_back_with_its_systematic_error():
    summary = LotSummary(SPEC, since="2026-12-01T10:00:00.000Z")
    for _ in range(4):
        summary.add({"cotton": 0.6, "polyester": 0.4}, {"cotton": 0.02, "polyester": 0.01}, None,
                    blend="cotton/polyester")
    old = summary.state()
    old["systematic"] = {b: {f: v / 4 for f, v in fibres.items()} for b, fibres in old.pop("systematic_sum").items()}
    assert LotSummary.from_state(old).systematic() == pytest.approx({"cotton": 0.02, "polyester": 0.01})


def test_a_fibre_some_results_read_beside_the_common_blend_takes_their_share_of_its_bias():
    """An honest linen/viscose lot, 6 of its 20 pieces read as cotton/viscose with 15 % cotton: the mean holds
    4.5 % cotton, the cotton/viscose table bounds cotton in those pieces at 8 pp; the lot is referred, not
    failed at 3 pp (before, the common blend's table gave cotton none and its interval lay above 3 %)."""
    spec = LotSpec("L2", {"linen": 0.6, "viscose": 0.4}, tolerance_pp=3.0)
    summary = LotSummary(spec, since="2026-12-01T10:00:00.000Z")
    for i in range(20):
        cotton = 0.15 if i < 6 else 0.0
        table = {"cotton": 0.08 / 1.96, "viscose": 0.01} if cotton else {"linen": 0.01, "viscose": 0.01}
        summary.add({"cotton": cotton, "linen": 0.6 - cotton, "viscose": 0.4}, table,
                    {"cotton": [cotton, cotton], "linen": [0.5, 0.7], "viscose": [0.35, 0.45]}, "undetermined",
                    blend="cotton/viscose" if cotton else "linen/viscose")
    doc = summary.to_dict("st1", "2026-12-01T10:05:00.000Z")
    assert doc["blend"] == "linen/viscose"
    assert doc["systematic"]["cotton"] == pytest.approx(6 * 0.08 / 1.96 / 20, abs=1e-4)
    assert doc["systematic"]["linen"] == pytest.approx(0.01, abs=1e-6)  # the common blend's own
    low, high = doc["interval_95"]["cotton"]
    assert low < 0.03 < high and doc["verdict"] == "undetermined" and "cotton" in doc["straddling_fibres"]
    assert validation_errors(doc, "lot") == []


def test_an_undeclared_fibre_no_table_bounds_takes_the_results_own_intervals():
    """Every piece read as linen/viscose/polyester yet holding 6 % cotton (no table bounds cotton there): the
    results' intervals, [0, 0.14], bound it; a cotton share in the lot's intervals that no result vouches
    for stays failed, and a lot kept before the half-widths were summed reads back as before."""
    spec = LotSpec("L3", {"linen": 0.3, "viscose": 0.24, "polyester": 0.46}, tolerance_pp=3.0)
    table = {"linen": 0.02, "viscose": 0.02, "polyester": 0.005, "cotton": 0.0}

    def lot(cotton_interval):
        summary = LotSummary(spec, since="2026-12-01T10:00:00.000Z")
        for i in range(20):
            cotton = 0.06 + (0.005 if i % 2 else -0.005)
            summary.add({"cotton": cotton, "linen": 0.24 - cotton + 0.06, "viscose": 0.24, "polyester": 0.46},
                        table, {"cotton": cotton_interval, "linen": [0.1, 0.4], "viscose": [0.1, 0.4],
                                "polyester": [0.43, 0.49]}, "undetermined", blend="linen/viscose/polyester")
        return summary

    wide = lot([0.0, 0.14])
    doc = wide.to_dict("st1", "2026-12-01T10:05:00.000Z")
    assert doc["systematic"]["cotton"] == pytest.approx(0.07 / 1.96, abs=1e-4)
    assert doc["verdict"] == "undetermined" and "cotton" in doc["straddling_fibres"]
    tight = lot([0.05, 0.07]).to_dict("st1", "2026-12-01T10:05:00.000Z")  # the results vouch for 5-7 %
    assert tight["verdict"] == "fail" and tight["failing_fibres"] == ["cotton"]
    back = LotSummary.from_state(wide.state())
    assert back.to_dict("st1", "2026-12-01T10:05:00.000Z")["interval_95"] == doc["interval_95"]
    before = {k: v for k, v in wide.state().items() if k != "half_sum"}
    assert LotSummary.from_state(before).to_dict("st1", "2026-12-01T10:05:00.000Z")["verdict"] == "fail"

"""`isic-model simulate-lots`: simulated lots judged by the station's own lot rule, at the demo bench's
settings or a station config's (then calibrated as that station is, with its confidence profile)."""

import json

from isic_model.cli import main
from isic_model.lot_simulation import lot_kind, summed_counts
from isic_station.daemon.spec_check import VERDICTS

from .test_confidence_profile import station_config


def simulated(capsys, *extra, lots="3"):
    assert main(["simulate-lots", "--lots", lots, "--size", "3", "--tolerance", "3,5", "--jobs", "2", "--json",
                 *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_lots_are_judged_at_the_settings_and_with_the_profile_of_the_station_config(tmp_path, capsys):
    production = station_config(tmp_path, "spectrometer.coadd=16", "camera.frames_per_measurement=16")
    cache = ["--cache", str(tmp_path / "cache")]
    demo = simulated(capsys, *cache)
    richer = simulated(capsys, *cache, "--config", str(production))
    assert demo["settings"]["n_frames"] == 3 and demo["confidence_profile"] is None
    assert richer["settings"]["n_frames"] == 16 and richer["settings"]["coadd"] == 16
    assert richer["confidence_profile"] == richer["settings"]  # the shipped model's profile at these settings
    for result in (demo, richer):
        for tolerance in ("3", "5"):
            for case in ("true", "offset"):
                shares = result["tolerance_pp"][tolerance][case]
                assert set(shares) == set(VERDICTS) and abs(sum(shares.values()) - 1.0) < 1e-9
            kinds = result["tolerance_pp"][tolerance]["by_kind"]
            assert sum(k["lots"] for k in kinds.values()) == 3
            for case in ("true", "offset"):  # the lots of each kind add up to all the lots' shares
                for verdict in VERDICTS:
                    assert abs(sum(k[case][verdict] * k["lots"] for k in kinds.values()) / 3
                               - result["tolerance_pp"][tolerance][case][verdict]) < 0.01
        assert 0.0 <= result["coverage_95"] <= 1.0


def test_a_lot_is_of_one_fibre_or_a_blend_counted_by_its_cellulose_fibres():
    fibres = ("cotton", "linen", "viscose", "polyester", "nylon")
    assert lot_kind([0, 0, 0, 1.0, 0], fibres) == "one fibre"
    assert lot_kind([0.6, 0.4, 0, 0, 0], fibres) == "blend, 2 cellulose"
    assert lot_kind([0.3, 0, 0, 0.5, 0.2], fibres) == "blend, 1 cellulose"
    assert lot_kind([0, 0, 0, 0.5, 0.5], fibres) == "blend, 0 cellulose"


def test_several_seeds_pool_their_lots_and_each_share_carries_its_interval(tmp_path, capsys):
    cache = ["--cache", str(tmp_path / "cache")]
    pooled = simulated(capsys, *cache, "--seeds", "3001,3002", lots="2")
    alone = simulated(capsys, *cache, "--seed", "3002", lots="2")
    assert pooled["seeds"] == [3001, 3002] and pooled["lots"] == 2 and pooled["pooled_lots"] == 4
    assert [s["seed"] for s in pooled["per_seed"]] == [3001, 3002]
    assert pooled["per_seed"][1]["tolerance_pp"] == alone["tolerance_pp"]  # a seed's lots are its own
    for tolerance in ("3", "5"):
        figures = pooled["tolerance_pp"][tolerance]
        for case in ("true", "offset"):
            for verdict in VERDICTS:  # the pooled share is the lots' share over both seeds
                per_seed = sum(s["tolerance_pp"][tolerance][case][verdict] * 2 for s in pooled["per_seed"])
                assert abs(figures[case][verdict] * 4 - per_seed) < 0.01
                low, high = figures["ci95"][case][verdict]
                assert 0.0 <= low <= figures[case][verdict] <= high <= 1.0 and high - low > 0.2  # 4 lots: wide
    assert main(["simulate-lots", "--seeds", "3001,3002", "--lots", "2", "--size", "3", *cache]) == 0
    text = capsys.readouterr().out
    assert "seeds 3001,3002" in text and "lot shares with 95 % intervals" in text


def test_lot_counts_add_key_by_key_and_keep_a_kind_only_one_seed_met():
    first = {"lots": 2, "covered": [3, 4], "by_kind": {"one fibre": {"pass": 1}}}
    second = {"lots": 3, "covered": [5, 5], "by_kind": {"one fibre": {"pass": 2}, "blend, 2 cellulose": {"pass": 0}}}
    assert summed_counts(first, second) == {
        "lots": 5, "covered": [8, 9], "by_kind": {"one fibre": {"pass": 3}, "blend, 2 cellulose": {"pass": 0}}}

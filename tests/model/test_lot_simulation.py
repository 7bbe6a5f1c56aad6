"""`isic-model simulate-lots`: simulated lots judged by the station's own lot rule, at the demo bench's
settings or a station config's (then calibrated as that station is, with its confidence profile)."""

import json

from isic_model.cli import main
from isic_model.lot_simulation import lot_kind
from isic_station.daemon.spec_check import VERDICTS

from .test_confidence_profile import station_config


def simulated(capsys, *extra):
    assert main(["simulate-lots", "--lots", "3", "--size", "3", "--tolerance", "3,5", "--jobs", "2", "--json",
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

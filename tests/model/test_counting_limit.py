"""`isic-model counting-limit`: the composition floor of a perfect fibre counter."""

import json

import numpy as np
import pytest

from isic_drivers.lab import Sample, load_fibres, render_frame
from isic_drivers.lab.microscope import draw_fibres_in_view
from isic_drivers.lab.sample import draw_nuisance
from isic_model.cli import main
from isic_model.counting_limit import _Prior, counting_limit
from isic_model.data import StationSettings

FIBRES = ["cotton", "linen", "viscose", "polyester", "nylon"]


def test_the_limit_draws_the_same_fibres_the_renderer_draws():
    sample = Sample({"cotton": 0.3, "polyester": 0.7}, draw_nuisance(np.random.default_rng(0), "default"))
    fibres = load_fibres()
    for seed in range(5):
        _, truth = render_frame(sample, np.random.default_rng(seed), 256, 256, 1.6, fibres)
        names, kinds = draw_fibres_in_view(sample, np.random.default_rng(seed), 256, 256, 1.6, fibres)
        assert truth.counts == {n: int(np.sum(kinds == i)) for i, n in enumerate(names)}


def test_posterior_mean_follows_the_counts_and_stays_a_composition():
    prior = _Prior(("cotton", "polyester"), alpha=1.0, seed=0)
    few_cotton = prior.posterior_mean(np.array([10.0, 90.0]))
    many_cotton = prior.posterior_mean(np.array([90.0, 10.0]))
    assert few_cotton.sum() == pytest.approx(1.0) and many_cotton.sum() == pytest.approx(1.0)
    assert few_cotton[0] < 0.2 < 0.8 < many_cotton[0]
    # No counts: the prior's mean (fractions drawn uniformly within the 10 % floors).
    assert prior.posterior_mean(np.zeros(2))[0] == pytest.approx(0.5, abs=0.02)


def test_more_frames_lower_the_floor():
    few = counting_limit(StationSettings(n_frames=1), FIBRES, seed=3, samples=120)
    many = counting_limit(StationSettings(n_frames=16), FIBRES, seed=3, samples=120)
    assert many["fibres_in_view"]["median"] > 10 * few["fibres_in_view"]["median"]
    assert many["mae"] < 0.6 * few["mae"]
    assert few["samples_with_a_fibre_type_unseen"] > many["samples_with_a_fibre_type_unseen"]


def test_command_prints_one_row_per_frame_count(capsys):
    assert main(["counting-limit", "--frames", "2,4", "--samples", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["n_frames"] for row in result["limits"]] == [2, 4]
    for row in result["limits"]:
        assert 0 < row["mae"] < 0.5 and 0 < row["model_input_area_share"] <= 1
        assert set(row["mae_per_blend"]) <= {f"{a}/{b}" for a in FIBRES for b in FIBRES}


def test_bad_frames_is_a_clear_error(capsys):
    assert main(["counting-limit", "--frames", "four", "--samples", "3"]) == 78
    assert "--frames" in capsys.readouterr().err

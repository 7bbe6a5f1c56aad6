"""`isic-model evaluate`: the JSON contract and the table, on a tiny model trained here."""

import json

import pytest

from fakes.tiny_isicnet import write_tiny_model
from isic_model.cli import main

from .test_train import TINY


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    config = folder / "tiny.toml"
    config.write_text(TINY.format(work=folder / "work"))
    assert main(["train", "--config", str(config), "--out", str(folder / "model"), "--ablation", "--no-evaluate"]) == 0
    return folder / "model"


def test_json_has_the_contract_keys_and_figures_in_range(tiny_model, capsys):
    rc = main(
        ["evaluate", "--model", str(tiny_model), "--seed", "9", "--samples", "3", "--json", "--set", "humidity=0.9"]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    for key in (
        "accuracy",
        "mae",
        "mae_per_fibre",
        "mae_per_blend",
        "signal_only",
        "baselines",
        "ablation",
        "preset",
        "seed",
        "samples",
    ):
        assert key in result
    assert result["seed"] == 9 and result["samples"] == 3 and result["overrides"] == {"humidity": 0.9}
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["mae"] <= 1.0
    assert set(result["ablation"]) == {"signal", "full"}
    assert result["ablation"]["full"]["mae"] == result["mae"]
    assert {"pls", "svm", "plsda"} <= set(result["baselines"])
    assert set(result["mae_per_fibre"]) <= {"cotton", "linen", "viscose", "polyester", "nylon"}
    # The perfect counter of the same frames (1 frame of 128 px here: a handful of fibres).
    limit = result["counting_limit"]
    assert 0.0 <= limit["mae"] <= 0.5 and limit["fibres_in_view"]["median"] >= 1


def test_same_seed_same_figures_and_table_output(tiny_model, capsys):
    args = ["evaluate", "--model", str(tiny_model / "manifest.json"), "--seed", "5", "--samples", "2", "--no-baselines"]
    assert main(args + ["--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args + ["--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "ISiC-Net (bimodal)" in table and "signal-only path" in table and "cotton/linen" in table
    assert "perfect fibre counter, same frames" in table


def test_unknown_override_is_a_config_error(tiny_model, capsys):
    rc = main(["evaluate", "--model", str(tiny_model), "--seed", "5", "--samples", "1", "--set", "gravity=2"])
    assert rc == 78 and "gravity" in capsys.readouterr().err


def test_several_seeds_are_pooled_with_intervals_and_station_settings_by_default(tiny_model, capsys):
    args = ["evaluate", "--model", str(tiny_model), "--seeds", "5,6", "--samples", "2", "--no-baselines",
            "--no-ablation", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seeds"] == [5, 6] and result["n"] == 4 and len(result["per_seed"]) == 2
    lo, hi = result["accuracy_ci95"]
    assert 0.0 <= lo <= result["accuracy"] <= hi <= 1.0
    assert result["mae_ci95"][0] <= result["mae"] <= result["mae_ci95"][1]
    # the demo bench's camera and spectrometer, the sample's label in every frame
    settings = result["settings"]
    assert (settings["frame_px"], settings["frame_height"], settings["camera_um_per_px"]) == (640, 480, 1.0)
    assert settings["n_frames"] == 3 and settings["coadd"] == 4 and settings["label"] is True
    # the first seed pooled alone is the single-seed run
    assert main(args[:3] + ["--seed", "5"] + args[5:]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["accuracy"] == result["per_seed"][0]["accuracy"] and single["n"] == 2


def test_seeds_must_be_numbers(tiny_model, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(tiny_model), "--seeds", "a,b", "--samples", "1"])
    assert "comma-separated whole numbers" in capsys.readouterr().err


def test_no_temperature_scores_the_models_as_at_a_station_without_a_room_sensor(tmp_path, capsys):
    """A model whose `temperature` input outweighs its spectrum answers otherwise when given no reading."""
    manifest = write_tiny_model(tmp_path / "model", om=False, temperature=True)
    args = ["evaluate", "--model", str(manifest), "--seed", "5", "--samples", "3", "--no-baselines", "--json"]
    runs = {}
    for flag in ([], ["--no-temperature"]):
        assert main(args + flag) == 0
        runs[bool(flag)] = json.loads(capsys.readouterr().out)
    assert runs[False]["room_sensor"] is True and runs[True]["room_sensor"] is False
    assert runs[False]["mae_per_fibre"] != runs[True]["mae_per_fibre"]

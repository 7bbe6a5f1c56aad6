"""`isic-model train` end to end on a tiny config: lab data, training, export, a manifest the station loads."""

import json

import pytest

from isic_model.cli import main
from isic_model.train import ABLATION_FLAGS, load_config, spectrum_params
from isic_station.errors import ConfigError
from isic_station.manifest import load_manifest

TINY = """
seed = 3
heldout_seed = 4
preset = "default"
train_samples = 6
eval_samples = 4
check_samples = 2
torch_threads = 1
work_dir = "{work}"
[station]
coadd = 2
n_frames = 1
frame_px = 128
camera_um_per_px = 2.0
[spectrum]
grid_start_nm = 905.0
grid_stop_nm = 1695.0
grid_step_nm = 20.0
reflectance_clip = [0.001, 1.5]
scatter = "snv"
savgol = {{ window = 5, polyorder = 2, deriv = 1 }}
[image]
tile_px = 32
um_per_px = 2.0
channels = 3
tiles_per_measurement = 4
[network]
dim = 8
depth = 1
heads = 2
mlp_dim = 8
signal_tokens = 2
signal_hidden = 8
head_hidden = 8
rec_mask_ratio = 0.2
[optim]
epochs = 1
batch = 3
lr = 1e-3
weight_decay = 0.0
train_tiles = 2
modality_dropout = 0.5
composition_weight = 1.0
blend_weight = 0.2
rec_spectrum_weight = 0.1
rec_patch_weight = 0.1
image_probe_weight = 0.5
[ablation]
variants = ["signal"]
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(work=tmp_path / "work"))
    return path


def test_train_writes_a_loadable_model_and_its_ablation(tiny_config, tmp_path):
    out = tmp_path / "model"
    assert main(["train", "--config", str(tiny_config), "--out", str(out), "--ablation", "--no-evaluate"]) == 0
    manifest = load_manifest(out / "manifest.json")
    assert manifest.graphs["bimodal"].inputs[1].shape == (4, 3, 32, 32)
    assert len(manifest.spectrum["wavelengths_nm"]) == 40
    training = json.loads((out / "manifest.json").read_text())["training"]
    assert training["seed"] == 3 and training["samples"] == 6 and training["train_seconds"] >= 0
    assert training["network"]["use_rec"] is True
    signal = load_manifest(out / "ablation" / "signal" / "manifest.json")
    assert json.loads(signal.path.read_text())["training"]["network"]["use_image"] is False
    # The checkpoint exports again to the same graphs.
    again = tmp_path / "again"
    assert main(["export", "--checkpoint", str(tmp_path / "work" / "full.pt"), "--out", str(again)]) == 0
    assert load_manifest(again / "manifest.json").fibres == manifest.fibres


def test_training_on_the_heldout_seed_is_refused(tiny_config, capsys):
    assert main(["train", "--config", str(tiny_config), "--seed", "4"]) == ConfigError.exit_code
    assert "heldout_seed" in capsys.readouterr().err


def test_shipped_config_keeps_seeds_apart_and_knows_every_variant():
    cfg = load_config(__import__("isic_model.model_commands", fromlist=["DEFAULT_CONFIG"]).DEFAULT_CONFIG)
    assert cfg["seed"] != cfg["heldout_seed"]
    assert set(cfg["ablation"]["variants"]) <= set(ABLATION_FLAGS)
    assert len(spectrum_params(cfg)["wavelengths_nm"]) == 159


def test_a_preset_mixture_draws_each_sample_from_one_of_its_presets():
    import numpy as np

    from isic_model.data import StationSettings

    settings = StationSettings(coadd=1, n_frames=0)
    rng = np.random.default_rng(0)
    humid = [settings.measure(rng, {"humid": 1.0}, None, ["cotton", "nylon"], with_frames=False) for _ in range(5)]
    assert all(m.truth.sample.nuisance.humidity >= 0.8 for m in humid)
    mixed = [
        settings.measure(rng, {"humid": 1.0, "clean": 1.0}, None, ["cotton"], with_frames=False) for _ in range(30)
    ]
    clean = [m for m in mixed if m.truth.sample.nuisance.humidity == 0.65]
    assert 5 < len(clean) < 25 and len(mixed) - len(clean) > 5

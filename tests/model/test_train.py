"""`isic-model train` end to end on a tiny config: lab data, training, export, a manifest the station loads."""

import json

import pytest

from isic_common.errors import ConfigError
from isic_model.cli import main
from isic_model.train import ABLATION_FLAGS, load_config, spectrum_params
from isic_station.manifest import load_manifest

TINY = """
model_version = "7"
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
tile_weight = 1.0
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
    assert json.loads((out / "manifest.json").read_text())["model"]["version"] == "7"
    signal = load_manifest(out / "ablation" / "signal" / "manifest.json")
    assert json.loads(signal.path.read_text())["training"]["network"]["use_image"] is False
    # The checkpoint exports again to the same graphs.
    again = tmp_path / "again"
    assert main(["export", "--checkpoint", str(tmp_path / "work" / "full.pt"), "--out", str(again)]) == 0
    assert load_manifest(again / "manifest.json").fibres == manifest.fibres


def test_parallel_variants_train_the_same_graphs_as_one_process(tiny_config, tmp_path):
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        args = ["train", "--config", str(tiny_config), "--out", str(out), "--ablation", "--no-evaluate", "--jobs", jobs]
        assert main(args) == 0
        runs[jobs] = [json.loads(p.read_text())["graphs"]["bimodal"]["sha256"]
                      for p in (out / "manifest.json", out / "ablation" / "signal" / "manifest.json")]
    assert runs["1"] == runs["2"] and runs["1"][0] != runs["1"][1]


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


def test_tile_fibre_shares_measure_each_type_s_length_in_each_tile():
    import numpy as np

    from isic_drivers.lab.microscope import DrawnFibre
    from isic_model.data import tile_fibre_shares

    class Tiles:  # the two fields of an ImageInput the shares read
        origins = ((0, 0, 0), (0, 0, 32), (1, 0, 0))

    line = np.stack([np.arange(0.0, 64.0, 2.0), np.full(32, 10.0)], axis=1)  # y = 10, x 0..62 (camera px)
    short = np.stack([np.full(4, 5.0), np.arange(0.0, 8.0, 2.0)], axis=1)  # x = 5, y 0..6
    frames = [[DrawnFibre("cotton", 15.0, line), DrawnFibre("linen", 15.0, short)], []]
    shares = tile_fibre_shares(Tiles(), frames, scale=1.0, tile_px=32, fibres=["cotton", "linen", "nylon"])
    # Tile 1: 16 cotton points and 4 linen points; tile 2: cotton only; frame 1: no fibre.
    assert np.allclose(shares, [[0.8, 0.2, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Rescaled frames: half the scale puts the whole cotton line in the first tile.
    assert tile_fibre_shares(Tiles(), frames, 0.5, 32, ["cotton", "linen", "nylon"])[1].tolist() == [0, 0, 0]


def test_lab_sets_carry_per_tile_truth_that_matches_what_the_tiles_show(tiny_config):
    import numpy as np

    from isic_model.data import StationSettings, generate
    from isic_model.train import fibre_set, image_params

    cfg = load_config(tiny_config)
    fibres, classes = fibre_set()
    settings = StationSettings(coadd=1, n_frames=2, frame_px=128, camera_um_per_px=2.0)
    every_tile = dict(image_params(cfg), tiles_per_measurement=32)  # 2 frames x 16 tiles, glass-only ones too
    lab = generate(5, 8, "clean", {}, settings, spectrum_params(cfg), every_tile, fibres, classes, progress=False)
    assert lab.tile_fibres.shape == lab.tiles.shape[:2] + (len(fibres),)
    totals = lab.tile_fibres.sum(axis=-1)
    assert np.allclose(totals[totals > 0], 1.0) and (totals > 0).mean() > 0.5 and (totals == 0).sum() >= 5
    # Only the sample's own fibres, and tiles with fibre are darker than empty glass.
    assert not (lab.tile_fibres * (lab.composition[:, None, :] == 0)).any()
    brightness = lab.tiles.reshape(lab.tiles.shape[:2] + (-1,)).mean(axis=-1)
    assert brightness[totals > 0].mean() < brightness[totals == 0].mean() - 5

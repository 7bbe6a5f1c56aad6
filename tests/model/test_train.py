"""`isic-model train` end to end on a tiny config: lab data, training, export, a manifest the station loads."""

import json

import pytest
import torch

from isic_common.errors import ConfigError
from isic_model.cli import main
from isic_model.train import ABLATION_FLAGS, _sensor_reading, load_config, spectrum_params
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
[counter]
samples = 3
frames_per_sample = 1
widths = [4, 8, 8, 8]
epochs = 1
batch = 8
lr = 1e-3
tiles_per_run = 4
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
    # The fibre counter: its own graph over 4 tiles a run, its totals the bimodal graph's third input.
    assert manifest.graphs["counter"].inputs[0].shape == (4, 3, 32, 32)
    assert manifest.graphs["counter"].output("fibre_length").shape == (4, len(manifest.fibres))
    assert manifest.graphs["bimodal"].inputs[2].name == "fibre_counts"
    assert manifest.graphs["bimodal"].inputs[2].shape == (4, len(manifest.fibres))
    assert len(manifest.spectrum["wavelengths_nm"]) == 40
    training = json.loads((out / "manifest.json").read_text())["training"]
    assert training["seed"] == 3 and training["samples"] == 6 and training["train_seconds"] >= 0
    assert training["network"]["use_rec"] is True and training["network"]["use_counts"] is True
    assert training["counter"]["tiles"] > 0 and len(training["counter"]["history"]) == 1
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


def test_the_ablation_alone_trains_beside_the_full_model_it_was_recorded_with(tiny_config, tmp_path, capsys):
    """`--ablation-only` adds OUT/ablation/ and leaves the full model as it is; it refuses another recipe's."""
    out = tmp_path / "model"
    assert main(["train", "--config", str(tiny_config), "--out", str(out), "--ablation-only"]) == ConfigError.exit_code
    assert "no full model" in capsys.readouterr().err
    assert main(["train", "--config", str(tiny_config), "--out", str(out), "--no-evaluate"]) == 0
    full = (out / "manifest.json").read_bytes()
    assert not (out / "ablation").exists()
    assert main(["train", "--config", str(tiny_config), "--out", str(out), "--ablation-only"]) == 0
    assert (out / "manifest.json").read_bytes() == full
    signal = json.loads((out / "ablation" / "signal" / "manifest.json").read_text())["training"]
    assert signal["variant"] == "signal" and signal["seed"] == 3
    assert main(["train", "--config", str(tiny_config), "--out", str(out), "--ablation-only", "--seed", "5"]) \
        == ConfigError.exit_code
    assert "'seed': 3" in capsys.readouterr().err


def test_a_model_trained_with_the_room_temperature_takes_the_sensor_s_reading(tmp_path):
    """`use_temperature`: both graphs take `temperature` and the manifest says how to scale it."""
    path = tmp_path / "tiny.toml"
    text = TINY.format(work=tmp_path / "work")
    text = text.replace("rec_mask_ratio = 0.2", "rec_mask_ratio = 0.2\nuse_temperature = true")
    sensor = "modality_dropout = 0.5\ntemperature_dropout = 0.5\ntemperature_noise_k = 1.0"
    path.write_text(text.replace("modality_dropout = 0.5", sensor))
    out = tmp_path / "model"
    assert main(["train", "--config", str(path), "--out", str(out), "--no-evaluate"]) == 0
    manifest = load_manifest(out / "manifest.json")
    assert manifest.temperature_input == {"reference_c": 22.0, "scale_k": 20.0}
    for graph in ("bimodal", "signal_only"):
        assert manifest.graphs[graph].inputs[-1].name == "temperature"
    assert json.loads((out / "manifest.json").read_text())["training"]["network"]["use_temperature"] is True


def test_the_sensor_reading_training_sees_is_noisy_and_sometimes_missing():
    rooms = torch.tensor([[0.5, 1.0]] * 2000)
    gen = torch.Generator().manual_seed(0)
    exact = _sensor_reading(rooms, {}, gen)
    torch.testing.assert_close(exact, rooms)
    read = _sensor_reading(rooms, {"temperature_dropout": 0.25, "temperature_noise_k": 2.0}, gen)
    missing = read[:, 1] == 0
    assert 0.2 < float(missing.float().mean()) < 0.3 and bool((read[missing] == 0).all())
    # 2 K of sensor noise on a 20 K scale: sd 0.1 around the room.
    assert abs(float(read[~missing, 0].std()) - 0.1) < 0.01 and abs(float(read[~missing, 0].mean()) - 0.5) < 0.01


def test_training_on_the_heldout_seed_is_refused(tiny_config, capsys):
    assert main(["train", "--config", str(tiny_config), "--seed", "4"]) == ConfigError.exit_code
    assert "heldout_seed" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["train.toml", "train-v5.toml"])
def test_shipped_config_keeps_seeds_apart_and_knows_every_variant(name):
    default = __import__("isic_model.model_commands", fromlist=["DEFAULT_CONFIG"]).DEFAULT_CONFIG
    cfg = load_config(default.with_name(name))
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


def test_counter_tiles_carry_per_tile_lengths_that_match_what_the_tiles_show(tiny_config):
    import numpy as np

    from isic_model.data import StationSettings, counter_tiles
    from isic_model.train import fibre_set, image_params

    cfg = load_config(tiny_config)
    fibres, _classes = fibre_set()
    settings = StationSettings(coadd=1, n_frames=2, frame_px=128, camera_um_per_px=2.0)
    tiles, lengths = counter_tiles(5, 4, "clean", settings, None, image_params(cfg), fibres, frames_per_sample=1,
                                   progress=False)
    # One frame of 4 x 4 tiles per sample, every tile usable (no label, no dust in `clean`).
    assert tiles.shape == (4 * 16, 3, 32, 32) and tiles.dtype == np.uint8
    assert lengths.shape == (4 * 16, len(fibres)) and (lengths >= 0).all()
    totals = lengths.sum(axis=-1)
    assert (totals > 0).mean() > 0.5 and (totals == 0).sum() >= 3
    # A fibre crossing a tile runs at least a fraction of its side; tiles with fibre are darker than glass.
    assert np.median(totals[totals > 0]) > 0.5
    brightness = tiles.reshape(len(tiles), -1).mean(axis=-1)
    assert brightness[totals > 0].mean() < brightness[totals == 0].mean() - 5


def test_plant_conditions_draw_each_measurement_s_station_settings():
    import numpy as np

    from isic_model.data import Conditions, StationSettings

    table = {"camera_um_per_px": [0.8, 1.6], "frames": [3, 16], "coadd": [4, 16], "label_share": 0.5,
             "frame_sizes": [[256, 256, 0.5, 16], [1280, 720, 0.5, 2]]}
    conditions = Conditions.from_table(table)
    rng = np.random.default_rng(0)
    drawn = [conditions.draw(rng, StationSettings()) for _ in range(200)]
    assert {(s.frame_px, s.frame_height) for s in drawn} == {(256, 256), (1280, 720)}
    assert all(s.n_frames <= 2 for s in drawn if s.frame_px == 1280)
    assert max(s.n_frames for s in drawn) == 16 and min(s.n_frames for s in drawn if s.frame_px == 256) == 3
    assert all(0.8 <= s.camera_um_per_px <= 1.6 for s in drawn) and {s.coadd for s in drawn} == {4, 16}
    assert 60 < sum(s.label for s in drawn) < 140
    assert conditions.accepted() == {"camera_um_per_px_range": [0.8, 1.6], "frame_px_range": [[256, 256], [1280, 720]],
                                     "frames_per_measurement_range": [3, 16], "coadd_range": [4, 16]}

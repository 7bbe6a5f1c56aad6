"""`isic-model dataset | plot-lab | lab-stats` end to end (the training extra: tqdm, matplotlib)."""

import json

import cv2
import numpy as np
import pytest

from isic_model.cli import main

pytestmark = pytest.mark.train


def _dataset(out, *extra: str) -> int:
    return main(["dataset", "--samples", "5", "--seed", "7", "--out", str(out), "--frames", "1",
                 "--frame-size", "64", "--shard-size", "2", *extra])


def test_dataset_writes_shards_and_index_reproducibly(tmp_path) -> None:
    assert _dataset(tmp_path / "a", "--preset", "humid", "--set", "dye_darkness=0.4") == 0
    assert _dataset(tmp_path / "b", "--preset", "humid", "--set", "dye_darkness=0.4") == 0
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index["seed"] == 7 and index["preset"] == "humid" and index["lab_version"]
    assert index["overrides"] == {"dye_darkness": 0.4}
    assert [s["samples"] for s in index["shards"]] == [2, 2, 1]
    shard_a = np.load(tmp_path / "a" / index["shards"][0]["file"])
    shard_b = np.load(tmp_path / "b" / index["shards"][0]["file"])
    for key in ("raw_counts", "reflectance", "frames", "composition", "frame_counts", "nuisance"):
        np.testing.assert_array_equal(shard_a[key], shard_b[key])
    assert shard_a["frames"].shape == (2, 1, 64, 64, 3)
    np.testing.assert_allclose(shard_a["composition"].sum(axis=1), 1.0, atol=1e-6)
    dye = index["nuisance_keys"].index("dye_darkness")
    assert np.all(shard_a["nuisance"][:, dye] == np.float32(0.4))
    assert all(index["blend_classes"][b] for b in shard_a["blend"])


def test_dataset_refuses_bad_input(tmp_path, capsys) -> None:
    assert _dataset(tmp_path / "c", "--set", "humdity=0.5") == 78
    assert "humdity" in capsys.readouterr().err
    assert _dataset(tmp_path / "c", "--preset", "tropical") == 78
    assert not (tmp_path / "c").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.npz").write_bytes(b"x")
    assert _dataset(tmp_path / "d") == 78


def test_plot_lab_writes_a_figure(tmp_path) -> None:
    out = tmp_path / "lab.png"
    assert main(["plot-lab", "--out", str(out), "--all-fibres"]) == 0
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 600 and image.shape[1] > 1000
    assert image.std() > 20  # not a blank canvas


def test_lab_stats_prints_speed_and_distances(capsys) -> None:
    assert main(["lab-stats", "--seconds", "0.2", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for key in ("spectra_per_s", "frames_256_per_s", "measurements_per_s"):
        assert figures[key]["wall"] > 0 and figures[key]["cpu"] > 0
    d = np.array(figures["snv_rms_distance_900_1700"])
    assert d.shape == (5, 5) and d[0, 1] < d[0, 3]

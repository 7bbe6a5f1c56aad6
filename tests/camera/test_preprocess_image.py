"""The model-ready image input: shapes, rescaling, tile choice, normalisation, determinism."""

import numpy as np
import pytest

from isic_common.errors import ConfigError, ModelError
from isic_station.preprocess.image import (
    FIBRE_TILE_MIN_COVERAGE,
    build_image_batch,
    build_image_input,
    fibre_mask,
    rescale_frame,
)

PARAMS = {"tile_px": 32, "um_per_px": 1.0, "channels": 1, "tiles_per_measurement": 4, "mean": 0.5, "std": 0.25}
# At 2 µm/px a 20 px square stands in for a fibre (40 µm); at 1 µm/px it is as short as dust.
COARSE = dict(PARAMS, um_per_px=2.0)


def blank(height: int = 96, width: int = 128, level: int = 200) -> np.ndarray:
    """An empty bright-field slide: uniform BGR."""
    return np.full((height, width, 3), level, np.uint8)


def with_fibre(frame: np.ndarray, top: int, left: int, size: int, level: int = 40) -> np.ndarray:
    """A dark square standing in for a fibre crossing (top, left)."""
    out = frame.copy()
    out[top : top + size, left : left + size] = level
    return out


def test_grey_batch_has_the_manifest_shape_and_dtype():
    batch = build_image_batch([blank(), blank()], 1.0, PARAMS)
    assert batch.shape == (4, 1, 32, 32)
    assert batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]


def test_colour_batch_is_channels_first_in_bgr_order():
    frame = blank()
    frame[..., 0], frame[..., 1], frame[..., 2] = 255, 0, 51
    batch = build_image_batch([frame], 1.0, dict(PARAMS, channels=3, mean=0.0, std=1.0))
    assert batch.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(batch[:, 0], 1.0)
    np.testing.assert_allclose(batch[:, 1], 0.0)
    np.testing.assert_allclose(batch[:, 2], 0.2)


def test_values_are_scaled_to_unit_range_then_normalised_with_manifest_mean_and_std():
    batch = build_image_batch([blank(level=153)], 1.0, dict(PARAMS, mean=0.4, std=0.1))
    np.testing.assert_allclose(batch, (153 / 255 - 0.4) / 0.1, rtol=1e-5)


def test_the_tiles_with_most_fibre_are_chosen_across_frames():
    first = with_fibre(blank(), top=40, left=70, size=20)      # inside tile (32, 64)
    second = with_fibre(blank(), top=0, left=0, size=30)       # inside tile (0, 0), more fibre
    info = build_image_input([first, second], 2.0, dict(COARSE, tiles_per_measurement=2))
    assert info.origins == ((1, 0, 0), (0, 32, 64))
    assert info.scores[0] > info.scores[1] > FIBRE_TILE_MIN_COVERAGE
    assert info.fibre_tiles == 2
    assert info.repeated == 0
    assert info.tiles_available == 2 * 3 * 4


def test_fibre_on_a_dark_field_scores_as_well_as_on_a_bright_one():
    bright = with_fibre(blank(level=220), 0, 0, 20, level=30)
    dark = with_fibre(blank(level=30), 0, 0, 20, level=220)
    one = dict(PARAMS, tiles_per_measurement=1)
    assert build_image_input([bright], 1.0, one).scores[0] == build_image_input([dark], 1.0, one).scores[0]


def test_equal_scores_are_broken_by_frame_then_tile_order():
    info = build_image_input([blank(), blank()], 1.0, dict(PARAMS, tiles_per_measurement=14))
    expected = [(0, r * 32, c * 32) for r in range(3) for c in range(4)] + [(1, 0, 0), (1, 0, 32)]
    assert list(info.origins) == expected
    assert info.fibre_tiles == 0


def test_the_same_frames_always_give_the_same_batch():
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    a = build_image_input(frames, 0.8, PARAMS)
    b = build_image_input([f.copy() for f in frames], 0.8, PARAMS)
    np.testing.assert_array_equal(a.batch, b.batch)
    assert a.origins == b.origins


def test_frames_are_rescaled_from_the_camera_scale_to_the_model_scale():
    # camera 1.0 µm/px, model 2.0 µm/px: the 256x192 frame becomes 128x96, i.e. 4x3 tiles of 32.
    frame = with_fibre(blank(192, 256), top=140, left=200, size=40)   # model px (70..90, 100..120)
    info = build_image_input([frame], 1.0, dict(COARSE, tiles_per_measurement=1))
    assert info.tiles_available == 12
    assert info.origins == ((0, 64, 96),)
    assert rescale_frame(frame, 0.5, 1.0).shape == (96, 128, 3)
    assert rescale_frame(frame, 2.0, 1.0).shape == (384, 512, 3)
    assert rescale_frame(frame, 1.0, 1.0) is frame


def test_too_few_tiles_repeats_the_best_ones_and_says_so():
    frame = with_fibre(blank(64, 64), top=0, left=40, size=20)   # 2x2 tiles; fibre in (0, 32)
    info = build_image_input([frame], 2.0, dict(COARSE, tiles_per_measurement=6))
    assert info.tiles_available == 4
    assert info.repeated == 2
    assert info.origins[0] == (0, 0, 32)
    assert info.origins[4:] == info.origins[:2]
    np.testing.assert_array_equal(info.batch[4], info.batch[0])
    assert info.fibre_tiles == 1


def test_a_frame_smaller_than_a_tile_at_model_scale_is_a_config_error():
    with pytest.raises(ConfigError, match="smaller than one 32 px tile"):
        build_image_batch([blank(100, 100)], 0.25, PARAMS)


def test_a_manifest_without_a_key_is_a_model_error_naming_it():
    params = dict(PARAMS)
    del params["tile_px"]
    with pytest.raises(ModelError, match="tile_px"):
        build_image_batch([blank()], 1.0, params)


def test_fibre_mask_finds_a_fibre_and_ignores_noise_and_uneven_light():
    rng = np.random.default_rng(0)
    # an empty slide lit unevenly (150 at the left edge, 230 at the right) with sensor noise
    lamp = np.linspace(150, 230, 320)[None, :].repeat(240, axis=0)
    slide = np.clip(lamp + rng.normal(0, 6, lamp.shape), 0, 255).astype(np.uint8)
    assert fibre_mask(slide).mean() < 0.001
    fibre = slide.copy()
    fibre[:, 150:166] = (fibre[:, 150:166] * 0.6).astype(np.uint8)      # a 16 px fibre, top to bottom
    mask = fibre_mask(fibre)
    assert mask[:, 152:164].mean() > 0.95
    assert mask[:, :140].mean() < 0.001 and mask[:, 176:].mean() < 0.001

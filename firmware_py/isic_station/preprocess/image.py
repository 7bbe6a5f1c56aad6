"""Microscope frames -> the model's image input: tiles at the trained resolution, normalised as in training.

Training and both inference backends build their image input with `build_image_batch`, so the board
feeds the model exactly what it was trained on. Every number (tile size, µm per pixel, channels,
tiles per measurement, mean, std) comes from the manifest's `image` object; nothing is repeated here.

Steps: convert to the manifest's channels (1 = grey, 3 = BGR in OpenCV's order), rescale each frame
from the camera's µm/px to the model's, cut non-overlapping tiles, score each tile's fibre content,
keep the best-scoring tiles across all frames, scale to [0, 1] and normalise (x - mean) / std.
Frames that failed the quality gate are never passed in (the caller's job).
"""

import logging
from dataclasses import dataclass
from typing import Any, List, Mapping, Sequence, Tuple

import cv2
import numpy as np

from isic_common.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

# A pixel belongs to a fibre when its (lightly smoothed) grey level differs from the local
# background by more than this many grey levels out of 255: low enough that a defocused (4 µm)
# pale fibre still counts, five times the camera noise left after the 5x5 Gaussian (sd 8 -> ~2).
FIBRE_CONTRAST_GREY = 12
# The background is estimated over windows this wide: wider than the widest fibre (wool ~40 µm),
# narrow enough to follow a lamp's vignetting.
BACKGROUND_WINDOW_PX = 72
BACKGROUND_SHRINK = 8
# A tile "bears fibre" when at least this fraction of its pixels is fibre.
FIBRE_TILE_MIN_COVERAGE = 0.02


@dataclass(frozen=True)
class ImageParams:
    """The manifest's `image` object, typed (see schemas/manifest.schema.json)."""

    tile_px: int
    um_per_px: float
    channels: int
    tiles_per_measurement: int
    mean: float
    std: float

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any]) -> "ImageParams":
        """Read the manifest's `image` object; ModelError names a missing or impossible value."""
        try:
            parsed = cls(
                tile_px=int(params["tile_px"]),
                um_per_px=float(params["um_per_px"]),
                channels=int(params["channels"]),
                tiles_per_measurement=int(params["tiles_per_measurement"]),
                mean=float(params["mean"]),
                std=float(params["std"]),
            )
        except KeyError as exc:
            raise ModelError(f"manifest 'image' has no {exc.args[0]!r} (it needs tile_px, um_per_px, "
                             "channels, tiles_per_measurement, mean, std)") from None
        if parsed.channels not in (1, 3):
            raise ModelError(f"manifest image.channels is {parsed.channels}, expected 1 or 3")
        if parsed.tile_px < 1 or parsed.tiles_per_measurement < 1 or parsed.um_per_px <= 0 or parsed.std <= 0:
            raise ModelError(f"manifest 'image' has an impossible value: {dict(params)}")
        return parsed


@dataclass(frozen=True)
class ImageInput:
    """The model's image input and what went into it, for the result and its quality flags.

    `batch` is float32 [B, C, P, P]; `scores[i]` is the fibre coverage (0..1) of the tile in row i,
    `origins[i]` = (frame index, top, left) in the rescaled frame. When fewer tiles exist than B,
    the best ones are repeated and `repeated` says how many rows are repeats.
    """

    batch: np.ndarray
    scores: np.ndarray
    origins: Tuple[Tuple[int, int, int], ...]
    tiles_available: int
    repeated: int

    @property
    def fibre_tiles(self) -> int:
        """How many distinct tiles in the batch bear fibre (coverage >= FIBRE_TILE_MIN_COVERAGE)."""
        distinct = self.scores[: len(self.scores) - self.repeated]
        return int(np.count_nonzero(distinct >= FIBRE_TILE_MIN_COVERAGE))


def to_grey(frame: np.ndarray) -> np.ndarray:
    """A uint8 BGR (or already grey) frame as one grey channel."""
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def background_level(grey: np.ndarray) -> np.ndarray:
    """The empty-slide grey level around each pixel (uint8, same shape), uneven illumination included.

    A median over windows of about BACKGROUND_WINDOW_PX pixels, computed on a 1/8 size copy and
    smoothly enlarged (about a millisecond at 640x480): fibres cover a minority of such a window,
    so the median is the glass, whether fibres are darker (bright field) or brighter (dark field).
    Frames too small for the window fall back to the whole-frame median.
    """
    height, width = grey.shape
    small_size = (width // BACKGROUND_SHRINK, height // BACKGROUND_SHRINK)
    kernel = BACKGROUND_WINDOW_PX // BACKGROUND_SHRINK | 1
    if min(small_size) < kernel:
        return np.full_like(grey, int(np.median(grey)))
    small = cv2.resize(grey, small_size, interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.medianBlur(small, kernel), (width, height), interpolation=cv2.INTER_LINEAR)


def fibre_mask(grey: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels that stand out from the local background (fibre, not glass).

    Hand-written because it is a few OpenCV calls; a learned segmenter would be heavier than the
    whole gate and would need its own training data.
    """
    smooth = cv2.GaussianBlur(grey, (5, 5), 0)
    return cv2.absdiff(smooth, background_level(grey)) > FIBRE_CONTRAST_GREY


def rescale_frame(frame: np.ndarray, camera_um_per_px: float, model_um_per_px: float) -> np.ndarray:
    """The frame resampled from the camera's µm/px to the model's (INTER_AREA shrinking, linear zooming)."""
    scale = camera_um_per_px / model_um_per_px
    if abs(scale - 1.0) < 1e-9:
        return frame
    height, width = frame.shape[:2]
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interpolation)


def _to_channels(frame: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return to_grey(frame)
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame


def _tile_grid(image: np.ndarray, tile_px: int) -> np.ndarray:
    """Non-overlapping tiles, row-major: [rows*cols, P, P(, 3)] (a view, the ragged edge dropped)."""
    rows, cols = image.shape[0] // tile_px, image.shape[1] // tile_px
    cropped = image[: rows * tile_px, : cols * tile_px]
    tail = cropped.shape[2:]
    grid = cropped.reshape((rows, tile_px, cols, tile_px) + tail).swapaxes(1, 2)
    return grid.reshape((rows * cols, tile_px, tile_px) + tail)


def build_image_input(
    frames_bgr: Sequence[np.ndarray], camera_um_per_px: float, params: Mapping[str, Any]
) -> ImageInput:
    """The B tiles with most fibre content across `frames_bgr`, normalised as the manifest says.

    Ties in the score are broken by frame order, then tile position (row-major), so the same frames
    always give the same batch. ConfigError when a frame at the model's scale is smaller than a tile
    (the camera's resolution or µm/px does not suit the model).
    """
    spec = ImageParams.from_manifest(params)
    if not frames_bgr:
        raise ValueError("build_image_input needs at least one frame")
    tiles: List[np.ndarray] = []
    scores: List[np.ndarray] = []
    origins: List[Tuple[int, int, int]] = []
    p = spec.tile_px
    for index, frame in enumerate(frames_bgr):
        scaled = rescale_frame(frame, camera_um_per_px, spec.um_per_px)
        rows, cols = scaled.shape[0] // p, scaled.shape[1] // p
        if rows == 0 or cols == 0:
            raise ConfigError(
                f"camera frame {frame.shape[1]}x{frame.shape[0]} px at {camera_um_per_px} µm/px is "
                f"{scaled.shape[1]}x{scaled.shape[0]} px at the model's {spec.um_per_px} µm/px, smaller "
                f"than one {p} px tile: raise the camera resolution or check camera um_per_px"
            )
        coverage = _tile_grid(fibre_mask(to_grey(scaled)), p).mean(axis=(1, 2))
        tiles.append(_tile_grid(_to_channels(scaled, spec.channels), p))
        scores.append(coverage)
        origins.extend((index, r * p, c * p) for r in range(rows) for c in range(cols))
    all_scores = np.concatenate(scores)
    # lexsort is stable: equal scores keep frame order, then row-major tile order.
    order = np.lexsort((-all_scores,))
    wanted = spec.tiles_per_measurement
    available = len(order)
    if available < wanted:
        log.info("only %d tiles in %d frame(s) for %d model rows: repeating the best ones",
                 available, len(frames_bgr), wanted)
    chosen = order[np.arange(wanted) % available]
    starts = np.cumsum([0] + [len(t) for t in tiles])
    frame_of = np.searchsorted(starts, chosen, side="right") - 1
    picked = np.stack([tiles[f][i - starts[f]] for f, i in zip(frame_of, chosen)]).astype(np.float32)
    picked = picked[:, None] if spec.channels == 1 else picked.transpose(0, 3, 1, 2)
    batch = (picked / np.float32(255.0) - np.float32(spec.mean)) / np.float32(spec.std)
    return ImageInput(
        batch=np.ascontiguousarray(batch, dtype=np.float32),
        scores=all_scores[chosen].astype(np.float32),
        origins=tuple(origins[i] for i in chosen),
        tiles_available=available,
        repeated=max(0, wanted - available),
    )


def build_image_batch(
    frames_bgr: Sequence[np.ndarray], camera_um_per_px: float, params: Mapping[str, Any]
) -> np.ndarray:
    """float32 [B, C, P, P] model input from frames (see `build_image_input` for scores and counts)."""
    return build_image_input(frames_bgr, camera_um_per_px, params).batch

"""Microscope frames -> the model's image input: tiles at the trained resolution, normalised as in training.

Training and both inference backends build their image input with `build_image_batch`, so the board
feeds the model exactly what it was trained on. Every number (tile size, µm per pixel, channels,
tiles per measurement, the most tiles averaged, mean, std) comes from the manifest's `image` object;
nothing is repeated here.

Steps: rescale each frame from the camera's µm/px to the model's, find the pixels that are not
fabric (`frame_masks`), convert to the manifest's channels (1 = grey, 3 = BGR in OpenCV's order),
cut non-overlapping tiles, score each tile's fibre content over its valid pixels, keep the
best-scoring usable tiles across all frames, scale to [0, 1] and normalise (x - mean) / std.
How many: the graph's batch B (`tiles_per_measurement`, the best repeated when fewer are usable) or,
when more are usable, up to `max_tiles` of them, which the predictor runs through the graph in
batches of B and averages (the graph answers per tile: at the production settings' 16 frames, the
best 16 of about 128 usable tiles left cotton/linen at 0.046 MAE, up to 96 of them 0.035; README,
"Every tile").
Frames that failed the quality gate are never passed in (the caller's job).

Masks (the partial-convolution idea, ../shared/seeds: invalid pixels are left out, not read as content):
- a printed sample label with its quiet zone (`sample_label.label_mask`) blocks: a tile touching it
  is never used, whatever its score (the model reads a QR code's squares as cotton);
- dust specks (fibre-like blobs too short to be a fibre) and glare (clipped blobs, where fibres
  cannot be seen) are ignored: they count neither as fibre nor as glass in a tile's score, are
  painted with the local background in the tiles the model gets, and a tile that is mostly
  ignored pixels is not used.
"""

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from isic_common.errors import ConfigError, ModelError
from isic_station.acquisition.sample_label import label_mask

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
# Dust and debris: fibre-mask blobs no longer than this. Fibres are hundreds of µm long and cross
# the frame; the lab's dust is 1-8 µm specks and 5-25 µm fibrils.
DUST_MAX_UM = 30.0
# Glare: clipped pixels (grey at or above this) in blobs at least this wide; what lies under them
# cannot be seen. Single clipped pixels are noise on a bright lamp spot.
GLARE_LEVEL = 254
GLARE_MIN_UM = 10.0
# A tile with a larger share of ignored (dust, glare) pixels than this is not used.
MAX_IGNORED_FRACTION = 0.5
PAINT_TINT_STEP = 4


class NoUsableTiles(ValueError):
    """Every tile of every frame touches a label or is mostly dust/glare: no image input to give."""


@dataclass(frozen=True)
class ImageParams:
    """The manifest's `image` object, typed (see schemas/manifest.schema.json)."""

    tile_px: int
    um_per_px: float
    channels: int
    tiles_per_measurement: int
    mean: float
    std: float
    max_tiles: int = 0  # the most tiles a measurement averages over (0: tiles_per_measurement)

    @property
    def most_rows(self) -> int:
        """The most rows of an image input: `max_tiles`, at least the graph's batch."""
        return max(self.max_tiles, self.tiles_per_measurement)

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
                max_tiles=int(params.get("max_tiles", 0)),
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

    `batch` is float32 [N, C, P, P], N = the usable tiles up to max_tiles and at least the graph's batch B;
    `scores[i]` is the fibre coverage (0..1) of the tile in row i,
    `origins[i]` = (frame index, top, left) in the rescaled frame, `picked[i]` its index among all the frames'
    tiles in frame order (each frame's row-major). When fewer tiles exist than B,
    the best ones are repeated and `repeated` says how many rows are repeats. `tiles_masked` tiles
    were left out for touching a label or being mostly dust/glare; `label_px` and `ignored_px`
    count the masked pixels over all frames (at the model's scale).
    """

    batch: np.ndarray
    scores: np.ndarray
    origins: Tuple[Tuple[int, int, int], ...]
    picked: np.ndarray
    tiles_available: int
    repeated: int
    tiles_masked: int = 0
    label_px: int = 0
    ignored_px: int = 0

    @property
    def fibre_tiles(self) -> int:
        """How many distinct tiles in the batch bear fibre (coverage >= FIBRE_TILE_MIN_COVERAGE)."""
        distinct = self.scores[: len(self.scores) - self.repeated]
        return int(np.count_nonzero(distinct >= FIBRE_TILE_MIN_COVERAGE))


def to_grey(frame: np.ndarray) -> np.ndarray:
    """A uint8 BGR (or already grey) frame as one grey channel."""
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def background_level(grey: np.ndarray) -> np.ndarray:
    """The empty-slide level around each pixel (uint8, same shape, grey or BGR), uneven illumination included.

    A median over windows of about BACKGROUND_WINDOW_PX pixels, computed on a 1/8 size copy and
    smoothly enlarged (about a millisecond at 640x480): fibres cover a minority of such a window,
    so the median is the glass, whether fibres are darker (bright field) or brighter (dark field).
    Frames too small for the window fall back to the whole-frame median.
    """
    height, width = grey.shape[:2]
    small_size = (width // BACKGROUND_SHRINK, height // BACKGROUND_SHRINK)
    kernel = BACKGROUND_WINDOW_PX // BACKGROUND_SHRINK | 1
    if min(small_size) < kernel:
        levels = np.median(grey.reshape(height * width, -1), axis=0)
        return np.broadcast_to(levels.astype(np.uint8).reshape(grey.shape[2:]), grey.shape).copy()
    small = cv2.resize(grey, small_size, interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.medianBlur(small, kernel), (width, height), interpolation=cv2.INTER_LINEAR)


def fibre_mask(grey: np.ndarray, background: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean mask of the pixels that stand out from the local background (fibre, not glass).

    `background` is `background_level(grey)` when the caller has it already. Hand-written because
    it is a few OpenCV calls; a learned segmenter would be heavier than the whole gate and would
    need its own training data.
    """
    smooth = cv2.GaussianBlur(grey, (5, 5), 0)
    return cv2.absdiff(smooth, background_level(grey) if background is None else background) > FIBRE_CONTRAST_GREY


def paint_glass(image: np.ndarray, where: np.ndarray, background: np.ndarray, glass: np.ndarray) -> np.ndarray:
    """A copy of `image` with the pixels `where` set to the glass around them.

    `background` is the grey background level; colour frames get it in the glass's own tint (the
    lamp's colour is the same over the frame), measured on the `glass` pixels.
    """
    out = image.copy()
    if image.ndim == 2:
        out[where] = background[where]
        return out
    step = PAINT_TINT_STEP   # every 4th pixel each way is plenty for one mean colour
    samples = image[::step, ::step][glass[::step, ::step]]
    colour = (samples if len(samples) else image.reshape(-1, image.shape[2])).mean(axis=0)
    tint = colour / max(1.0, float(colour @ np.array([0.114, 0.587, 0.299])))   # BGR over its grey (BT.601)
    out[where] = np.clip(background[where][:, None] * tint[None, :], 0, 255).astype(np.uint8)
    return out


@dataclass(frozen=True)
class FrameMasks:
    """The pixels of one frame (at the model's scale) that are not fabric: `label` blocks tiles,
    `ignored` (dust, glare) is left out of scores and painted over."""

    label: np.ndarray
    ignored: np.ndarray


def dust_mask(fibre: np.ndarray, um_per_px: float) -> np.ndarray:
    """The blobs of a fibre mask too short to be fibres (dust specks, debris fibrils)."""
    _count, labels, stats, _centres = cv2.connectedComponentsWithStats(fibre.view(np.uint8), connectivity=8,
                                                                        ltype=cv2.CV_16U)
    dust = np.zeros(fibre.shape, dtype=bool)
    longest = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT]) * um_per_px
    for index in np.flatnonzero(longest < DUST_MAX_UM) + 1:   # few and small: set them box by box
        x, y, w, h = stats[index, :4]
        dust[y:y + h, x:x + w] |= labels[y:y + h, x:x + w] == index
    return dust


def glare_mask(grey: np.ndarray, um_per_px: float) -> np.ndarray:
    """Clipped blobs at least GLARE_MIN_UM wide (a clipped pixel alone is noise)."""
    clipped = (grey >= GLARE_LEVEL).astype(np.uint8)
    if not clipped.any():
        return np.zeros(grey.shape, dtype=bool)
    size = max(2, int(round(GLARE_MIN_UM / um_per_px)))
    return cv2.morphologyEx(clipped, cv2.MORPH_OPEN, np.ones((size, size), np.uint8)).astype(bool)


def frame_masks(grey: np.ndarray, fibre: np.ndarray, um_per_px: float) -> FrameMasks:
    """Label, dust and glare masks of a grey frame at `um_per_px`, given its `fibre_mask`."""
    label = label_mask(grey, um_per_px)
    return FrameMasks(label=label, ignored=(dust_mask(fibre & ~label, um_per_px) | glare_mask(grey, um_per_px))
                      & ~label)


def rescale_frame(frame: np.ndarray, camera_um_per_px: float, model_um_per_px: float) -> np.ndarray:
    """The frame resampled from the camera's µm/px to the model's (INTER_AREA shrinking, linear zooming)."""
    scale = camera_um_per_px / model_um_per_px
    if abs(scale - 1.0) < 1e-9:
        return frame
    height, width = frame.shape[:2]
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interpolation)


def scale_problem(camera_um_per_px: float, params: Mapping[str, Any]) -> Optional[str]:
    """Why the camera's scale does not suit the model (naming the config key), or None when it does.

    The manifest's `image.camera_um_per_px_range` is the range the station resamples from; a
    manifest without one accepts any scale.
    """
    accepted = params.get("camera_um_per_px_range")
    if not accepted:
        return None
    low, high = float(accepted[0]), float(accepted[1])
    if low <= camera_um_per_px <= high:
        return None
    return (f"camera.um_per_px = {camera_um_per_px:g} is outside the {low:g}-{high:g} µm/px the model accepts "
            f"(it resamples frames to {float(params['um_per_px']):g} µm/px): set camera.um_per_px to the "
            "microscope's real scale, or change the objective so it falls in the range")


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


@dataclass(frozen=True)
class FrameTiles:
    """One frame cut into tiles at the model's scale, masks applied (what `build_image_input` ranks).

    `tiles` uint8 [n, P, P(, 3)] in the manifest's channels (row-major over the frame, ragged edge
    dropped), `scores` their fibre coverage over valid pixels, `usable` False where a tile touches a
    label or is mostly dust/glare, `labelled` True where it touches a label, `origins` (top, left) in the
    rescaled frame; `label_px` and `ignored_px` count the masked pixels.
    """

    tiles: np.ndarray
    scores: np.ndarray
    usable: np.ndarray
    origins: Tuple[Tuple[int, int], ...]
    label_px: int
    ignored_px: int
    labelled: np.ndarray

    def normalised(self, rows: np.ndarray, spec: ImageParams) -> np.ndarray:
        """float32 [len(rows), C, P, P]: these tiles scaled to [0, 1] and normalised as the manifest says."""
        picked = self.tiles[rows].astype(np.float32)
        picked = picked[:, None] if spec.channels == 1 else picked.transpose(0, 3, 1, 2)
        return np.ascontiguousarray((picked / np.float32(255.0) - np.float32(spec.mean)) / np.float32(spec.std),
                                    dtype=np.float32)

    def counted(self, spec: ImageParams) -> np.ndarray:
        """float32 [n_usable, C, P, P]: every usable tile, normalised (what the fibre counter reads)."""
        return self.normalised(np.flatnonzero(self.usable), spec)


def cut_frame(frame: np.ndarray, camera_um_per_px: float, spec: ImageParams) -> FrameTiles:
    """Rescale one frame to the model's µm/px, mask it, cut and score its tiles.

    ConfigError when the frame at the model's scale is smaller than a tile (the camera's resolution
    or µm/px does not suit the model).
    """
    p = spec.tile_px
    scaled = rescale_frame(frame, camera_um_per_px, spec.um_per_px)
    rows, cols = scaled.shape[0] // p, scaled.shape[1] // p
    if rows == 0 or cols == 0:
        raise ConfigError(
            f"camera frame {frame.shape[1]}x{frame.shape[0]} px at {camera_um_per_px} µm/px is "
            f"{scaled.shape[1]}x{scaled.shape[0]} px at the model's {spec.um_per_px} µm/px, smaller "
            f"than one {p} px tile: raise the camera resolution or check camera um_per_px"
        )
    grey = to_grey(scaled)
    background = background_level(grey)
    fibre = fibre_mask(grey, background)
    masks = frame_masks(grey, fibre, spec.um_per_px)
    ignored_share = _tile_grid(masks.ignored, p).mean(axis=(1, 2))
    valid_px = np.float32(p * p) * (1.0 - ignored_share)
    fibre_px = _tile_grid(fibre & ~masks.ignored, p).sum(axis=(1, 2))
    image = _to_channels(scaled, spec.channels)
    if masks.ignored.any():   # painted with the glass around them: the model sees no dust or glare
        image = paint_glass(image, masks.ignored, background, ~(fibre | masks.ignored | masks.label))
    labelled = _tile_grid(masks.label, p).any(axis=(1, 2))
    return FrameTiles(
        tiles=_tile_grid(image, p),
        scores=np.divide(fibre_px, valid_px, out=np.zeros_like(valid_px), where=valid_px > 0),
        usable=~labelled & (ignored_share <= MAX_IGNORED_FRACTION),
        origins=tuple((r * p, c * p) for r in range(rows) for c in range(cols)),
        label_px=int(np.count_nonzero(masks.label)),
        ignored_px=int(np.count_nonzero(masks.ignored)),
        labelled=labelled,
    )


def build_image_input(
    frames_bgr: Sequence[np.ndarray], camera_um_per_px: float, params: Mapping[str, Any]
) -> ImageInput:
    """The tiles with most fibre content across `frames_bgr` (B, or up to max_tiles), normalised as the
    manifest says.

    Ties in the score are broken by frame order, then tile position (row-major), so the same frames
    always give the same batch. ConfigError when a frame at the model's scale is smaller than a tile
    (the camera's resolution or µm/px does not suit the model); NoUsableTiles when masks leave none.
    """
    spec = ImageParams.from_manifest(params)
    if not frames_bgr:
        raise ValueError("build_image_input needs at least one frame")
    return select_tiles([cut_frame(frame, camera_um_per_px, spec) for frame in frames_bgr], spec)


def rows_for(available: int, spec: ImageParams) -> int:
    """Rows of the image input when `available` tiles are usable: all of them up to `max_tiles`, and at least
    the graph's batch (the best repeated)."""
    return max(spec.tiles_per_measurement, min(available, spec.most_rows))


def select_tiles(cut: Sequence[FrameTiles], spec: ImageParams) -> ImageInput:
    """The best usable tiles over these frames' tiles, `rows_for(available, spec)` of them (`build_image_input`
    once they are cut)."""
    all_scores = np.concatenate([frame.scores for frame in cut])
    # A label found in one frame blocks its tiles in every frame of the measurement: camera and sample hold
    # still within one, and the label detector misses a label now and then (a fibre across its quiet zone);
    # with up to max_tiles tiles a frame's unmasked label tiles reached the model (4 tiles in one of 318
    # measurements at the station, where the best 16 had left them out).
    blocked = {origin for frame in cut for origin, hit in zip(frame.origins, frame.labelled) if hit}
    all_usable = np.concatenate([frame.usable & ~np.array([o in blocked for o in frame.origins], dtype=bool)
                                 for frame in cut])
    origins = [(index, top, left) for index, frame in enumerate(cut) for top, left in frame.origins]
    # lexsort is stable: equal scores keep frame order, then row-major tile order.
    order = np.lexsort((-all_scores,))
    order = order[all_usable[order]]
    available = len(order)
    if available == 0:
        raise NoUsableTiles(f"all {len(all_scores)} tiles of {len(cut)} frame(s) touch a sample label "
                            "or are mostly dust/glare")
    wanted = rows_for(available, spec)
    if available < wanted:
        log.debug("only %d usable tiles in %d frame(s) for %d model rows: repeating the best ones",
                 available, len(cut), wanted)
    chosen = order[np.arange(wanted) % available]
    starts = np.cumsum([0] + [len(frame.scores) for frame in cut])
    frame_of = np.searchsorted(starts, chosen, side="right") - 1
    # One normalisation per frame over its chosen rows, then the rows back in the chosen order.
    batch = np.empty((wanted, spec.channels, spec.tile_px, spec.tile_px), dtype=np.float32)
    for f in np.unique(frame_of):
        rows = np.flatnonzero(frame_of == f)
        batch[rows] = cut[f].normalised(chosen[rows] - starts[f], spec)
    return ImageInput(
        batch=batch,
        scores=all_scores[chosen].astype(np.float32),
        origins=tuple(origins[i] for i in chosen),
        picked=chosen,
        tiles_available=available,
        repeated=max(0, wanted - available),
        tiles_masked=int(np.count_nonzero(~all_usable)),
        label_px=sum(frame.label_px for frame in cut),
        ignored_px=sum(frame.ignored_px for frame in cut),
    )


def tile_evidence(image: ImageInput, camera_um_per_px: float, params: Mapping[str, Any]) -> str:
    """One log line saying which tiles went to the model and what was masked (`bench accuracy` parses it)."""
    return (f"image tiles at {float(params['um_per_px']):g} um/px from {camera_um_per_px:g} um/px: "
            f"{image.tiles_masked} masked, label {image.label_px} px, ignored {image.ignored_px} px, origins "
            + " ".join(f"{f}:{top}:{left}" for f, top, left in image.origins))


def build_image_batch(
    frames_bgr: Sequence[np.ndarray], camera_um_per_px: float, params: Mapping[str, Any]
) -> np.ndarray:
    """float32 [B, C, P, P] model input from frames (see `build_image_input` for scores and counts)."""
    return build_image_input(frames_bgr, camera_um_per_px, params).batch

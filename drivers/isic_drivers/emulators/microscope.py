"""The virtual microscope: a camera that shows the virtual lab's current sample, with faults on demand.

It lets the station, its tests and its benchmarks run with no camera: the frames are the lab's
`render_frame` of whatever is on the `SampleStage` (the same stage the emulated spectrometer
measures), read through the same CameraSource as a real device (`virtual:` sources). The fibre
drawing is the lab's; this module adds only what a camera adds: pacing, a printed sample label in
the corner (a QR code, when asked and when the sample has an id; drawn through the lab's `decorate`
hook, so optics and camera noise act on it as on the fibres), and faults for testing the quality
gate and the reconnect logic:

- `blur`, `overexposed`, `empty`: frames from `fault_after` on (for `fault_frames` frames, 0 = all)
  are out of focus (the lab's defocus), over-exposed (camera gain), or show the empty white tile;
- `unplug`: at frame `fault_after` the camera vanishes for `fault_s` seconds (reads and opens fail);
- `stall`: the read of frame `fault_after` takes `fault_s` seconds.

Glare (`glare=P`: the share of frames, 0..1) is a specular reflection off the slide or a shiny
fibre: a soft spot of light added before optics and camera act, clipping the sensor where it is
brightest, so whatever lies under it cannot be seen.

The label is off unless asked for (`label=1`): like a real printed label it is sharp, high-contrast
"content", so frames showing it are for identification, not for the model's tiles.
"""

import logging
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import cv2
import numpy as np

from isic_common.errors import ConfigError, DeviceError
from isic_drivers.camera.readers import FrameReader

log = logging.getLogger(__name__)

FAULTS = ("blur", "overexposed", "empty", "unplug", "stall")
IMAGE_FAULTS = ("blur", "overexposed", "empty")
LABEL_QUIET_ZONE_MODULES = 4
LABEL_MODULE_PX = 6
LABEL_PAPER_LEVEL = 0.95   # transmission of the white label paper
BLUR_FAULT_DEFOCUS_UM = 4.0
GLARE_RADIUS_UM = (20.0, 60.0)
GLARE_PEAK = 1.6            # added transmission at the spot's centre (1.0 = the full lamp)
OVEREXPOSURE_GAIN, OVEREXPOSURE_OFFSET = 2.5, 80


def _label_code(text: str) -> np.ndarray:
    """The QR code of `text` with its white quiet zone, one pixel per module (uint8)."""
    code = cv2.QRCodeEncoder.create().encode(text)
    return cv2.copyMakeBorder(code, *(LABEL_QUIET_ZONE_MODULES,) * 4, cv2.BORDER_CONSTANT, value=255)


def label_box(text: str, width: int, height: int, margin_px: int = 8) -> Tuple[int, int, int]:
    """(left, top, side) in pixels of the printed label (quiet zone included) in a width x height frame.

    Modules are LABEL_MODULE_PX wide (smaller only when the frame is too small): with 4 px modules a
    quarter of the lab's frames at its normal defocus could not be read, with 6 px one in thirty.
    """
    modules = _label_code(text).shape[0]
    module_px = min(LABEL_MODULE_PX, (min(height, width) - 2 * margin_px) // modules)
    if module_px < 2:
        raise ConfigError(f"a sample label of {modules} modules does not fit a {width}x{height} frame")
    side = modules * module_px
    return width - side - margin_px, height - side - margin_px, side


def glare_decorator(rng: np.random.Generator, um_per_px: float) -> Callable[[np.ndarray], None]:
    """A `render_frame` decorator adding one glare spot (Gaussian, radius drawn from GLARE_RADIUS_UM)."""

    def decorate(image: np.ndarray) -> None:
        height, width = image.shape[:2]
        radius = float(rng.uniform(*GLARE_RADIUS_UM)) / um_per_px
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        y = np.arange(height, dtype=np.float32)[:, None]
        x = np.arange(width, dtype=np.float32)[None, :]
        spot = np.float32(GLARE_PEAK) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / np.float32(radius * radius))
        image += spot[..., None]

    return decorate


def label_decorator(text: str, margin_px: int = 8) -> Callable[[np.ndarray], None]:
    """A `render_frame` decorator printing `text` as a QR code (white quiet zone) in the bottom-right
    corner (`label_box`). It draws on the lab's float BGR transmission image (0..1) in place."""
    code = _label_code(text)

    def decorate(image: np.ndarray) -> None:
        height, width = image.shape[:2]
        left, top, side = label_box(text, width, height, margin_px)
        label = cv2.resize(code, (side, side), interpolation=cv2.INTER_NEAREST).astype(np.float32) / 255.0
        image[top : top + side, left : left + side] = (label * LABEL_PAPER_LEVEL)[..., None]

    return decorate


class VirtualMicroscope(FrameReader):
    """Frames of `stage.current()` rendered by the virtual lab, at `fps` (0: as fast as asked)."""

    def __init__(
        self,
        stage: Any,
        width: int = 640,
        height: int = 480,
        um_per_px: float = 1.0,
        fps: float = 0.0,
        seed: int = 0,
        label: bool = False,
        glare: float = 0.0,
        fault: Optional[str] = None,
        fault_after: int = 0,
        fault_frames: int = 0,
        fault_s: float = 2.0,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ConfigError(f"virtual microscope fault {fault!r} is unknown; expected one of {', '.join(FAULTS)}")
        self.name = "virtual microscope"
        self.stage = stage
        self.width, self.height, self.um_per_px, self.fps = width, height, um_per_px, fps
        self.label = label
        if not 0.0 <= glare <= 1.0:
            raise ConfigError(f"virtual microscope glare={glare}: expected a share of frames from 0 to 1")
        self.glare = glare
        self.fault, self.fault_after, self.fault_frames, self.fault_s = fault, fault_after, fault_frames, fault_s
        self._rng = np.random.default_rng(seed)
        self._frames = 0
        self._unplugged_until = 0.0
        self._event_done = False
        self._next_frame_at = 0.0
        self._labels: Dict[str, Callable[[np.ndarray], None]] = {}
        self.last_truth: Any = None      # the lab's FrameTruth of the last frame (fibre counts per type)
        self.last_content: Any = None    # the Sample (or reference tile) the last frame showed

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], width: Optional[int] = None, height: Optional[int] = None,
        fps: Optional[float] = None, um_per_px: float = 1.0,
    ) -> "VirtualMicroscope":
        """Build from `virtual:?key=value&...` options (seed, dwell, stage, preset, label, glare, fault,
        fault_after, fault_frames, fault_s, width, height, fps); ConfigError names an unknown or malformed option."""
        known = {"seed", "dwell", "stage", "preset", "label", "glare", "fault", "fault_after", "fault_frames",
                 "fault_s", "width", "height", "fps", "um_per_px"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown virtual microscope option(s) {unknown}; expected some of {sorted(known)}")
        try:
            seed = int(options.get("seed", 0))
            return cls(
                stage=_make_stage(options.get("stage"), seed, float(options.get("dwell", 5.0)),
                                  str(options.get("preset", "default"))),
                width=int(options.get("width", width or 640)),
                height=int(options.get("height", height or 480)),
                um_per_px=float(options.get("um_per_px", um_per_px)),
                fps=float(options.get("fps", fps or 0.0)),
                seed=seed,
                label=str(options.get("label", "0")).lower() in ("1", "true", "yes", "on"),
                glare=float(options.get("glare", 0.0)),
                fault=options.get("fault") or None,
                fault_after=int(options.get("fault_after", 0)),
                fault_frames=int(options.get("fault_frames", 0)),
                fault_s=float(options.get("fault_s", 2.0)),
            )
        except ValueError as exc:
            raise ConfigError(f"virtual microscope option malformed: {exc} (options {dict(options)})") from None

    def _unplugged(self) -> bool:
        return time.monotonic() < self._unplugged_until

    def open(self) -> None:
        if self._unplugged():
            raise DeviceError(f"camera {self.name}: unplugged (simulated fault)")
        self._next_frame_at = time.monotonic()

    def read(self) -> np.ndarray:
        if self.fault in ("unplug", "stall") and self._frames == self.fault_after and not self._event_done:
            self._event_done = True     # these faults happen once, before frame `fault_after`
            if self.fault == "unplug":
                self._unplugged_until = time.monotonic() + self.fault_s
                log.info("virtual microscope unplugged for %.1f s (simulated fault)", self.fault_s)
            else:
                time.sleep(self.fault_s)
        if self._unplugged():
            raise DeviceError(f"camera {self.name}: unplugged (simulated fault)")
        self._pace()
        from isic_drivers.lab import ReferenceTile, render_frame

        content = self.stage.current()
        faulty = self._image_fault_now()
        if faulty == "empty":
            content = ReferenceTile("white")     # the slide without the (labelled) sample
        sample_id = getattr(content, "sample_id", None)
        decorators = [self._label(str(sample_id))] if self.label and sample_id else []
        if self.glare and self._rng.random() < self.glare:
            decorators.append(glare_decorator(self._rng, self.um_per_px))
        defocus = BLUR_FAULT_DEFOCUS_UM if faulty == "blur" else None
        frame, truth = render_frame(content, self._rng, self.width, self.height, self.um_per_px,
                                    defocus_um=defocus, decorate=_chain(decorators))
        if faulty == "overexposed":
            frame = cv2.convertScaleAbs(frame, alpha=OVEREXPOSURE_GAIN, beta=OVEREXPOSURE_OFFSET)
        self._frames += 1
        self.last_truth, self.last_content = truth, content
        return frame

    def _label(self, text: str) -> Callable[[np.ndarray], None]:
        if text not in self._labels:
            self._labels = {text: label_decorator(text)}   # one sample at a time: keep only its label
        return self._labels[text]

    def _pace(self) -> None:
        if self.fps <= 0:
            return
        delay = self._next_frame_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next_frame_at = max(self._next_frame_at, time.monotonic() - 1.0 / self.fps) + 1.0 / self.fps

    def _image_fault_now(self) -> Optional[str]:
        """The image fault the next frame gets, if any."""
        if self.fault not in IMAGE_FAULTS or self._frames < self.fault_after:
            return None
        if self.fault_frames and self._frames >= self.fault_after + self.fault_frames:
            return None
        return self.fault

    def close(self) -> None:
        """Nothing to release; the stage and the random stream carry on at the next open."""


def _chain(decorators: Any) -> Optional[Callable[[np.ndarray], None]]:
    """One decorator applying `decorators` in order (None when there are none)."""
    if not decorators:
        return None

    def decorate(image: np.ndarray) -> None:
        for draw in decorators:
            draw(image)

    return decorate


def _make_stage(path: Optional[str], seed: int, dwell_s: float, preset: str) -> Any:
    """The stage file at `path` (shared with the emulated spectrometer), else an in-process production line."""
    from isic_drivers.lab import SampleStage

    if path:
        return SampleStage(path)
    return SampleStage.production_line(seed, dwell_s, preset)

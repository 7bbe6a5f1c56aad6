"""Acquisition: one measurement from the spectrometer and the microscope, with its sample context.

A measurement is what the probe saw of one piece of fabric: a co-added raw spectrum (several
scans averaged, so noise falls with their square root), the reflectance computed from it with the
dark/white references, the microscope frames that passed the quality gate, the flags that say what
was wrong with any of it, and who it belongs to (station, lot, sample). The sample id is the one
the `measure` command gave; else a QR/barcode label read from a frame; else one generated from the
station id and the UTC time, so every result can be traced back.

Spectrum and frames are taken at the same time: a measurement takes as long as the slower device, not
their sum. `measure` hands the camera to a frame thread for the duration of one measurement, which reads
the frames and works on each as it arrives (quality gate, sample label, the model's tiles), while the acquisition thread
asks the spectrometer for its (on-instrument averaged) spectrum and turns it into reflectance; the
measurement is complete when both are. Only the acquisition thread calls `Acquirer`, and during a
measurement only the frame thread touches the camera, the gate and the label reader, so no locking is
needed. A failed camera degrades the measurement (flag `missing_image`, signal-only inference) instead
of failing it; a failed spectrometer fails it (there is nothing to infer from): the frame thread is told
to stop after its current frame, and the error is raised once it has.
"""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Protocol, Set, Tuple

import numpy as np

from isic_common.errors import DeviceError, StationError
from isic_drivers.camera import CameraStats, Frame
from isic_drivers.obp.transport import TransportStats
from isic_station.acquisition.calibration import CalibrationStore, Reference
from isic_station.acquisition.quality_gate import QualityGate
from isic_station.acquisition.sample_label import SampleLabelReader
from isic_station.daemon.pipeline import MeasureJob, MeasurementRefused
from isic_station.preprocess.image_stream import ImageBatchBuilder, StreamedImage

log = logging.getLogger(__name__)

# A co-added pixel this close to the instrument's full scale was clipped in (nearly) every scan.
SATURATION_FRACTION = 0.98
# Scans co-added into a dark or white reference (at least the measurement's own co-adding).
REFERENCE_SCANS = 16

# quality_gate reasons -> result flags
GATE_FLAGS = {"blurred": "blurred_image", "overexposed": "exposure", "underexposed": "exposure",
              "empty": "empty_field"}


@dataclass
class Measurement:
    """Everything inference and the result need about one measurement (spectra, frames, context, flags)."""

    station: str
    lot_id: Optional[str]
    sample_id: str
    sample_id_source: str  # "command", "label" or "generated"
    origin: str  # "command" or "timer"
    measured_at: datetime
    requested_at: float  # time.monotonic() of the trigger (command arrival or timer tick)
    acquire_ms: float
    counts: np.ndarray
    wavelengths_nm: np.ndarray
    reflectance: np.ndarray
    frames: List[np.ndarray]
    flags: Set[str] = field(default_factory=set)
    spectrum_ms: float = 0.0  # trigger to the spectrum's reflectance (the spectrometer's share)
    frames_ms: float = 0.0  # trigger to the last frame gated (the camera's share)
    # The passed frames' image input, built as they arrived, for the model it was built for.
    image: Optional[StreamedImage] = None
    temperature_c: Optional[float] = None  # the room by the spectrometer's sensor (None: it has none)


class NotCalibrated(StationError, MeasurementRefused):
    """No usable dark and white reference: reflectance cannot be computed, so no result can be either."""


def spectrum_flags(counts: np.ndarray, dark: Optional[np.ndarray], white_peak: Optional[float],
                   min_signal_fraction: float, full_scale: float) -> Set[str]:
    """`saturation` when pixels sat at the instrument's `full_scale`; `low_signal` when the peak above the
    dark is below `min_signal_fraction` of the white reference's peak (of full scale without one)."""
    flags = set()
    if float(np.max(counts)) >= SATURATION_FRACTION * full_scale:
        flags.add("saturation")
    signal = counts - dark if dark is not None and dark.shape == counts.shape else counts
    reference = white_peak if white_peak else full_scale
    if float(np.max(signal)) < min_signal_fraction * reference:
        flags.add("low_signal")
    return flags


class SpectrometerLink(Protocol):
    """The spectrometer's serial link as the station sees it (`isic_drivers.obp.transport.SerialTransport`)."""

    port: str
    stats: TransportStats  # `.opens` counts the (re)opens

    @property
    def is_open(self) -> bool: ...

    def open(self, timeout_s: Optional[float] = None) -> None: ...

    def close(self) -> None: ...


class Spectrometer(Protocol):
    """What the station asks of a spectrometer (`isic_drivers.obp.spectrometer.ObpSpectrometer`)."""

    transport: SpectrometerLink
    averaging_supported: Optional[bool]
    full_scale_counts: float

    def set_integration_time_us(self, microseconds: int) -> None: ...

    def integration_time_us(self) -> int: ...

    def serial_number(self) -> str: ...

    def wavelengths(self, pixel_count: Optional[int] = None) -> np.ndarray: ...

    def raw_spectrum(self) -> np.ndarray: ...

    def coadd(self, scans: int) -> np.ndarray: ...

    def temperature_c(self, sensor: int = 0) -> Optional[float]: ...

    def health(self) -> Dict[str, Any]: ...


class Camera(Protocol):
    """What the station asks of a camera (`isic_drivers.camera.CameraSource`)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def read(self, timeout_s: Optional[float] = None) -> Optional[Frame]: ...

    def stats(self) -> CameraStats: ...


# A fresh image-input builder for one measurement, for the model in use (None: build none).
ImageBatchFactory = Callable[[], Optional[ImageBatchBuilder]]


@dataclass
class FrameGrab:
    """What the frame thread gives back: frames read, those that passed the gate, image flags, the first
    sample label found (when asked to look), and when it finished."""

    read: int = 0
    passed: List[np.ndarray] = field(default_factory=list)
    flags: Set[str] = field(default_factory=set)
    label: Optional[str] = None
    images: Optional[ImageBatchBuilder] = None  # an ImageBatchBuilder fed the passed frames, None when it failed
    done_at: float = 0.0
    error: Optional[BaseException] = None


def generated_sample_id(station: str, moment: datetime) -> str:
    """A sample id for a measurement nobody named: station and UTC time to the millisecond."""
    return f"{station}-{moment.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%S')}{moment.microsecond // 1000:03d}Z"


class Acquirer:
    """Takes measurements and references with the devices it is given.

    `spectrometer` is an `ObpSpectrometer`; `camera` a `CameraSource` or None (signal-only); `gate` a
    `QualityGate`; `label_reader` a `SampleLabelReader` or None; `calibration` the `CalibrationStore` whose
    references turn counts into reflectance; `context()` gives (station, lot id); `image_batch()`, when
    given, a fresh `ImageBatchBuilder` per measurement for the model in use (tiles cut as frames arrive).
    """

    def __init__(
        self,
        spectrometer: Spectrometer,
        camera: Optional[Camera],
        gate: QualityGate,
        label_reader: Optional[SampleLabelReader],
        calibration: CalibrationStore,
        integration_us: int,
        context: Callable[[], Tuple[str, Optional[str]]],
        coadd: int,
        frames_per_measurement: int,
        min_signal_fraction: float,
        frame_timeout_s: float = 2.0,
        image_batch: Optional[ImageBatchFactory] = None,
        temperature_offset_c: float = 0.0,
    ) -> None:
        self.spectrometer = spectrometer
        self.camera = camera
        self.gate = gate
        self.label_reader = label_reader
        self.calibration = calibration
        self.integration_us = integration_us
        self._context = context
        self.coadd = coadd
        self.frames_per_measurement = frames_per_measurement
        self.min_signal_fraction = min_signal_fraction
        self.frame_timeout_s = frame_timeout_s
        self.image_batch = image_batch
        self.temperature_offset_c = temperature_offset_c
        # One frame thread for the Acquirer's life (not one per measurement: each new thread may take
        # another malloc arena, and resident memory grows with them).
        self._frame_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frames")
        self.wavelengths_nm = np.zeros(0)
        self.serial_number = ""
        self._prepared_at_open = -1

    def prepare(self) -> None:
        """Set the integration time and read the serial number and wavelength axis, again after every
        reopen of the serial port (a power-cycled or swapped instrument forgets its settings).
        DeviceError when the instrument does not answer."""
        transport = self.spectrometer.transport
        if self._prepared_at_open == transport.stats.opens and transport.is_open:
            return
        self.spectrometer.set_integration_time_us(self.integration_us)
        serial_number = str(self.spectrometer.serial_number())
        self.wavelengths_nm = np.asarray(self.spectrometer.wavelengths(), dtype=np.float64)
        if serial_number != self.serial_number:
            log.info("spectrometer %s on %s: integration %d us, %d pixels %.0f-%.0f nm, %d scans co-added",
                     serial_number, transport.port, self.integration_us, len(self.wavelengths_nm),
                     self.wavelengths_nm[0], self.wavelengths_nm[-1], self.coadd)
        self.serial_number = serial_number
        self._prepared_at_open = transport.stats.opens

    def _coadded_counts(self) -> np.ndarray:
        """Co-added counts taken with the instrument prepared; measured again once if the port was reopened
        (and the instrument possibly reset) in the middle."""
        self.prepare()
        counts = self.spectrometer.coadd(self.coadd)
        if self._prepared_at_open != self.spectrometer.transport.stats.opens:
            self.prepare()
            counts = self.spectrometer.coadd(self.coadd)
        return counts

    def take_reference(self, kind: str) -> Reference:
        """Capture and store a dark or white reference (more scans than a measurement: it is reused).

        A white reference that clips at full scale would make every reflectance wrong where it clips,
        so it is refused (NotCalibrated, naming the integration time) before anything is stored.
        """
        self.prepare()
        if kind == "white":
            peak = float(np.max(self.spectrometer.raw_spectrum()))
            limit = SATURATION_FRACTION * self.spectrometer.full_scale_counts
            if peak >= limit:
                raise NotCalibrated(f"white reference refused: the white tile saturates the detector ({peak:.0f} "
                                    f"counts) at spectrometer.integration_us = {self.integration_us}; lower it "
                                    f"until the white peak is below {limit:.0f}")
        return self.calibration.capture(self.spectrometer, kind, scans=max(REFERENCE_SCANS, self.coadd))

    def measure(self, job: MeasureJob) -> Measurement:
        """One measurement for `job`: spectrum and frames at once, flags and sample context."""
        station, lot_id = self._context()
        measured_at = datetime.now(timezone.utc)
        started = time.monotonic()
        grab, stop = FrameGrab(), threading.Event()
        if self.camera is not None and self.image_batch is not None:
            grab.images = self.image_batch()
        frames_done = (self._frame_thread.submit(self._grab_frames, grab, stop, not job.sample_id)
                       if self.camera is not None else None)
        try:
            counts, reflectance, flags = self._spectrum()
            temperature_c = self.spectrometer.temperature_c()
        except BaseException:
            stop.set()
            raise
        finally:
            spectrum_done = time.monotonic()
            if frames_done is not None:
                frames_done.result()
        if grab.error is not None:
            raise grab.error
        if self.camera is not None:
            flags |= grab.flags if grab.read else {"missing_image"}
        if job.sample_id:
            sample_id, source = job.sample_id, "command"
        elif grab.label:
            sample_id, source = grab.label, "label"
        else:
            sample_id, source = generated_sample_id(station, measured_at), "generated"
        images = grab.images if grab.images is not None and grab.images.frames == len(grab.passed) else None
        finished = time.monotonic()
        return Measurement(
            station=station, lot_id=lot_id, sample_id=sample_id, sample_id_source=source, origin=job.origin,
            measured_at=measured_at, requested_at=job.requested_at, acquire_ms=(finished - started) * 1000.0,
            counts=counts, wavelengths_nm=self.wavelengths_nm, reflectance=reflectance, frames=grab.passed,
            flags=flags, spectrum_ms=(spectrum_done - started) * 1000.0,
            frames_ms=(grab.done_at - started) * 1000.0 if frames_done is not None else 0.0,
            image=images.built() if images is not None else None,
            temperature_c=None if temperature_c is None else round(temperature_c - self.temperature_offset_c, 2),
        )

    def _spectrum(self) -> Tuple[np.ndarray, np.ndarray, Set[str]]:
        """(co-added counts, reflectance, spectrum and calibration flags); NotCalibrated without references."""
        counts = self._coadded_counts()
        reflectance, calibration_flags = self.calibration.reflectance(counts, serial=self.serial_number,
                                                                      integration_us=self.integration_us)
        if not np.all(np.isfinite(reflectance)):
            raise NotCalibrated(f"no usable dark and white reference in {self.calibration.path} "
                                f"({', '.join(calibration_flags)}): calibrate dark, then white")
        flags = set(calibration_flags)
        dark = self.calibration.references.get("dark")
        flags |= spectrum_flags(counts, None if dark is None else np.asarray(dark.counts),
                                self.calibration.white_peak, self.min_signal_fraction,
                                self.spectrometer.full_scale_counts)
        return counts, reflectance, flags

    def _grab_frames(self, grab: FrameGrab, stop: threading.Event, find_label: bool) -> None:
        """The frame thread: read up to `frames_per_measurement` frames, gating each (and looking for a
        sample label until one is found) as it arrives; stop early when `stop` is set."""
        try:
            for _ in range(self.frames_per_measurement):
                if stop.is_set():
                    break
                try:
                    frame = self.camera.read(timeout_s=self.frame_timeout_s)
                except DeviceError as exc:
                    log.warning("camera gave %d of %d frames (%s); measuring with what there is",
                                grab.read, self.frames_per_measurement, exc)
                    break
                if frame is None:
                    break
                grab.read += 1
                self._work_on_frame(frame.image, grab, find_label)
        except BaseException as exc:  # a bug, not a device fault: the acquisition thread raises it
            grab.error = exc
        grab.done_at = time.monotonic()

    def _work_on_frame(self, image: np.ndarray, grab: FrameGrab, find_label: bool) -> None:
        quality = self.gate.assess(image)
        if quality.passed:
            grab.passed.append(image)
            if grab.images is not None:
                try:
                    grab.images.add(image)
                except Exception as exc:  # e.g. a frame smaller than a tile: inference builds it and says so
                    log.debug("image input not built while acquiring: %s", exc)
                    grab.images = None
        else:
            log.debug("frame rejected by the quality gate: %s", quality)
        grab.flags |= {GATE_FLAGS[r] for r in quality.reasons if r in GATE_FLAGS}
        if find_label and grab.label is None and self.label_reader is not None:
            grab.label = self.label_reader.read(image) or None

    def close(self) -> None:
        """Let the frame thread end (a measurement in progress finishes first)."""
        self._frame_thread.shutdown(wait=True)

    def device_states(self) -> Dict[str, Dict[str, Any]]:
        """The health document's `devices`: spectrometer and camera state and reconnect counts."""
        devices: Dict[str, Dict[str, Any]] = {}
        link = self.spectrometer.health()
        devices["spectrometer"] = {
            "state": "ok" if link.get("open") else "disconnected",
            "reconnects": int(link.get("reconnects", 0)),
            "detail": f"{link.get('port')}: {link.get('last_error') or 'no error'}",
            "link_errors": {key: int(link.get(source, 0)) for key, source in (
                ("discarded_bytes", "scanner_discarded_bytes"), ("checksum_failures", "scanner_checksum_failures"),
                ("false_starts", "scanner_false_starts"), ("retried_requests", "retried_requests"))},
        }
        if self.camera is None:
            devices["camera"] = {"state": "absent", "reconnects": 0, "detail": "signal-only (camera.source is empty)"}
        else:
            stats = self.camera.stats()
            devices["camera"] = {
                "state": "ok" if stats.connected else "disconnected",
                "reconnects": int(stats.reconnects_total),
                "detail": f"{stats.source}: {stats.fps:.1f} fps, {stats.stalls_total} stalls"
                + (f", last error: {stats.last_error}" if stats.last_error else ""),
            }
        return devices

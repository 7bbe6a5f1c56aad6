"""Wiring: the station's parts, made from the validated Config in one place.

The daemon is given its parts; it does not build them. `build_parts(config)` makes each one (with
the `make_*` functions, which doctor calls one by one) the way `run`, `calibrate`, `doctor` and
`bench pipeline` all use it: the spectrometer (OBP over a
serial transport), the camera, the quality gate with its thresholds, the sample label reader, the
calibration and wavelength stores, the model (manifest, backend and predictor, loaded when asked:
at start-up and on `reload_model`), the MQTT link's settings and the outbox. Nothing is opened
or read here - a port, a camera, a model, the outbox or the calibration files open when the Station
starts, in the order its docstring gives (a state directory it cannot write is named by the outbox,
first), so a part made here costs nothing until used. A test or a bench hands the Station
other parts instead (fakes, a wrapper that counts), which is the point of the seam.
"""

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Tuple

import isic_model
from isic_drivers.camera import CameraSource
from isic_drivers.obp.spectrometer import ObpSpectrometer
from isic_drivers.obp.transport import SerialTransport
from isic_station.acquisition.acquirer import Acquirer, Camera, ImageBatchFactory, Spectrometer
from isic_station.acquisition.calibration import CalibrationStore
from isic_station.acquisition.quality_gate import GateThresholds, QualityGate
from isic_station.acquisition.sample_label import SampleLabelReader
from isic_station.acquisition.wavelength_check import WavelengthStore
from isic_station.config import Config, mqtt_password
from isic_station.inference.predictor import Predictor
from isic_station.inference.registry import create_backend
from isic_station.manifest import Manifest, load_manifest
from isic_station.messaging.mqtt_link import MqttSettings
from isic_station.messaging.outbox import Outbox
from isic_station.preprocess.image import scale_problem
from isic_station.uncertainty import settings_note, settings_problem, station_settings_of

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def manifest_path(config: Config) -> Path:
    """The configured manifest, or the model shipped with the package."""
    return config.model.manifest if config.model.manifest is not None else isic_model.SHIPPED_MANIFEST


def quality_thresholds(config: Config) -> GateThresholds:
    """The quality gate's thresholds: the [quality] keys that are set, the gate's defaults for the rest."""
    configured = {f.name: getattr(config.quality, f.name, None) for f in fields(GateThresholds)}
    return GateThresholds(**{k: v for k, v in configured.items() if v is not None})


def mqtt_settings(config: Config) -> MqttSettings:
    """The MQTT link's settings from the [mqtt], [station] and [health] sections (password read now)."""
    m = config.mqtt
    return MqttSettings(
        host=m.host, port=m.port, prefix=config.station.prefix, station_id=config.station.id,
        client_id=m.client_id or None, keepalive_s=m.keepalive_s, reconnect_max_s=m.reconnect_max_s, tls=m.tls,
        ca_file=str(m.ca_file) if m.ca_file else None,
        cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None,
        username=m.username or None, password=mqtt_password(m),
        health_interval_s=config.health.interval_s, discovery=m.discovery, ha_prefix=m.discovery_prefix,
        allow_plaintext_password=m.allow_plaintext_password,
    )


class ModelLoader:
    """The configured model: `manifest()` reads (and checks) the manifest, `load()` also starts its backend
    and warns, naming `camera.um_per_px`, when the camera's scale is outside what the model accepts."""

    def __init__(self, config: Config) -> None:
        self.path = manifest_path(config)
        self.kind = config.model.backend
        self.options = {"threads": config.model.threads, "device_id": config.model.device_id}
        self.camera_um_per_px = config.camera.um_per_px if config.camera.source else None
        self.config = config

    def manifest(self) -> Manifest:
        """The manifest as it is on disk now (ModelError naming what is wrong)."""
        return load_manifest(self.path)

    def load(self, manifest: Optional[Manifest] = None) -> Predictor:
        """A predictor for `manifest` (default: read it now) with its backend loaded; the caller closes
        `predictor.backend`. A calibration fitted on richer measurements than this station's is named in
        `predictor.settings_problem` (and warned of)."""
        manifest = manifest if manifest is not None else self.manifest()
        calibrated_for = manifest.calibration_data.get("station")
        problem = settings_problem(calibrated_for, self.config) if calibrated_for else None
        predictor = Predictor(manifest, create_backend(self.kind, manifest, self.options), settings_problem=problem,
                              measuring=station_settings_of(self.config))
        log.info("model %s %s on %s", manifest.name, manifest.version, predictor.backend.name)
        if predictor.calibration is not None and predictor.calibration.profile is not None:
            log.info("blend confidence tempered as calibrated at %s (the station measures at least as much)",
                     ", ".join(f"{k} {v}" for k, v in sorted(predictor.calibration.profile["station"].items())))
        scale = scale_problem(self.camera_um_per_px, manifest.image) if self.camera_um_per_px else None
        if scale:
            log.warning("%s", scale)
        if problem:
            log.warning("%s", problem)
        note = settings_note(calibrated_for, self.config) if calibrated_for and not problem else None
        if note:
            log.info("%s", note)
        return predictor


@dataclass
class StationParts:
    """What the Station is given. Devices are made but not opened; what reads or writes the state directory
    or loads slowly is made when the station asks (`open_outbox()`, `model.load()`, `link_settings()`,
    `open_calibration()`, `open_wavelength()`), in its start-up order."""

    spectrometer: Spectrometer
    camera: Optional[Camera]
    gate: QualityGate
    label_reader: Optional[SampleLabelReader]
    open_calibration: Callable[[], CalibrationStore]
    open_wavelength: Callable[[], WavelengthStore]
    model: ModelLoader
    link_settings: Callable[[], MqttSettings]
    open_outbox: Callable[[], Outbox]


def make_spectrometer(config: Config) -> ObpSpectrometer:
    """The OBP spectrometer on its (unopened) serial transport, from [spectrometer]."""
    spec = config.spectrometer
    return ObpSpectrometer(SerialTransport(spec.port, spec.baud, read_timeout_s=spec.timeout_s))


def make_camera(config: Config) -> Optional[CameraSource]:
    """The (unopened) camera from [camera]; None when `camera.source` is empty (signal-only)."""
    cam = config.camera
    return CameraSource(cam.source, cam.width, cam.height, cam.fps, cam.um_per_px) if cam.source else None


def make_gate(config: Config) -> QualityGate:
    """The frame quality gate with the [quality] thresholds at the camera's scale."""
    return QualityGate(quality_thresholds(config), config.camera.um_per_px)


def make_calibration_store(config: Config, read_only: bool = False) -> CalibrationStore:
    """The dark/white references in `calibration.dir` (`read_only`: report a damaged file, do not move it)."""
    return CalibrationStore(config.calibration.dir, max_age_s=config.calibration.max_age_h * 3600.0,
                            read_only=read_only)


def build_parts(config: Config, camera: bool = True) -> StationParts:
    """Every part of the configured station (see the module docstring); `camera=False` leaves the camera
    out (`calibrate` needs only the spectrometer)."""
    c = config
    source = make_camera(c) if camera else None
    return StationParts(
        spectrometer=make_spectrometer(c),
        camera=source,
        gate=make_gate(c),
        label_reader=SampleLabelReader() if source is not None else None,
        open_calibration=lambda: make_calibration_store(c),
        open_wavelength=lambda: WavelengthStore(c.calibration.dir),
        model=ModelLoader(c),
        link_settings=lambda: mqtt_settings(c),
        open_outbox=lambda: Outbox(c.outbox.path, int(c.outbox.quota_mb * MIB)),
    )


def make_acquirer(config: Config, parts: StationParts, calibration: CalibrationStore,
                  context: Callable[[], Tuple[str, Optional[str]]],
                  image_batch: Optional[ImageBatchFactory] = None) -> Acquirer:
    """The Acquirer over the parts' devices and `calibration` with the [spectrometer], [camera] and [quality]
    settings."""
    c = config
    return Acquirer(
        parts.spectrometer, parts.camera, parts.gate, parts.label_reader, calibration=calibration,
        integration_us=c.spectrometer.integration_us, context=context, coadd=c.spectrometer.coadd,
        frames_per_measurement=c.camera.frames_per_measurement, min_signal_fraction=c.quality.min_signal_fraction,
        image_batch=image_batch, temperature_offset_c=c.spectrometer.temperature_offset_c,
    )

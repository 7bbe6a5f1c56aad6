"""The station daemon: builds every part from the config, wires them together and answers commands.

    spectrometer + camera -> Acquirer -> Pipeline (acquisition, inference threads) -> result
    result -> MqttLink.publish_result (durable Outbox first, then MQTT) ; out-of-spec / refer-to-lab -> alarm
    lot results -> LotSummary -> retained <prefix>/<station>/lot (through the Outbox)
    MQTT cmd/<name> -> CommandRouter -> the handlers here ; health <- Station.health_source()

Start-up order is what systemd's READY=1 promises: outbox (state directory writable), model and
backend (sha256 checked), MQTT link (it never waits for the broker: results wait in the outbox),
devices opened and prepared, pipeline running. A device that is absent at start does not stop the
station: it starts degraded, says so in STATUS= and with a device_fault alarm, and the drivers keep
reconnecting; STATUS= follows every later fault and recovery too.
Shutdown (SIGTERM/SIGINT): STOPPING=1, stop taking measurements, finish those already taken,
flush the outbox to the broker within the flush timeout, disconnect, close the devices.
"""

import logging
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from isic_common.errors import DeviceError, ModelError, StationError
from isic_common.percentile import percentile
from isic_station import __version__
from isic_station.acquisition import Acquirer, Measurement
from isic_station.commands import COMMAND_NAMES, CommandError, CommandHandler, CommandRouter
from isic_station.config import Config, mqtt_password
from isic_station.lot_store import LotStore
from isic_station.outbox import Outbox
from isic_station.pipeline import CalibrateJob, MeasureJob, Pipeline, PipelineBusy, PipelineStats
from isic_station.results import build_alarm, build_result, out_of_spec_alarm, refer_to_lab_alarm, utc_iso
from isic_station.schemas import delivery
from isic_station.sd_notify import ProgressWatchdog, ServiceNotifier
from isic_station.spec_check import InvalidLotSpec, LotSpec, LotSummary, check_composition
from isic_station.uncertainty import settings_problem, spectrum_quality
from isic_station.wavelength_check import WavelengthStore, fit_offset

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# The longest a `measure` or `calibrate` command waits for its answer (several co-added scans,
# frames, inference; a spectrometer that is reconnecting).
COMMAND_TIMEOUT_S = 30.0


def manifest_path(config: Config) -> Path:
    """The configured manifest, or the model shipped with the package."""
    if config.model.manifest is not None:
        return config.model.manifest
    from isic_model import SHIPPED_MANIFEST

    return SHIPPED_MANIFEST


def quality_thresholds(config: Config) -> Any:
    """The quality gate's `GateThresholds`: the [quality] keys that are set, the gate's defaults for the rest."""
    from dataclasses import fields

    from isic_station.quality_gate import GateThresholds

    configured = {f.name: getattr(config.quality, f.name, None) for f in fields(GateThresholds)}
    return GateThresholds(**{k: v for k, v in configured.items() if v is not None})


def mqtt_settings(config: Config) -> Any:
    """The MQTT link's `MqttSettings` from the [mqtt], [station] and [health] sections (password read now)."""
    from isic_station.mqtt_link import MqttSettings

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


def reference_ages(references: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """`{dark_age_s, white_age_s}`: seconds since each reference was taken, None when there is none."""
    now = time.time()
    return {f"{kind}_age_s": (round(max(0.0, now - references[kind].captured_at), 1) if kind in references
                              else None) for kind in ("dark", "white")}


class TimeToResult:
    """Trigger-to-PUBACK time of recent results, minus the acquisition itself (the station's own latency)."""

    KEEP = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._triggers: Dict[int, float] = OrderedDict()  # row -> trigger + acquisition time
        self._acks: Dict[int, float] = OrderedDict()  # row -> ack time, when the ack came first
        self.samples_ms: List[float] = []

    def published(self, row: int, requested_at: float, acquire_ms: float) -> None:
        """Result `row` was triggered at `requested_at` (monotonic) and took `acquire_ms` to acquire."""
        with self._lock:
            start = requested_at + acquire_ms / 1000.0
            acked = self._acks.pop(row, None)
            if acked is not None:
                self._add(acked - start)
            else:
                self._keep(self._triggers, row, start)

    def acked(self, row: int) -> None:
        """Outbox row `row` was acknowledged by the broker just now (called on the MQTT thread at PUBACK)."""
        at = time.monotonic()
        with self._lock:
            start = self._triggers.pop(row, None)
            if start is not None:
                self._add(at - start)
            else:
                self._keep(self._acks, row, at)

    def _keep(self, table: Dict[int, float], row: int, value: float) -> None:
        table[row] = value
        while len(table) > self.KEEP:
            del table[next(iter(table))]

    def _add(self, seconds: float) -> None:
        self.samples_ms.append(max(0.0, seconds * 1000.0))
        del self.samples_ms[: -self.KEEP]

    def summary(self) -> Dict[str, Any]:
        """{n, p50, p99} in milliseconds over the recent results."""
        with self._lock:
            values = list(self.samples_ms)
        return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}


class Station:
    """The daemon object: owns every part; `start()`, `stop()`, and the command handlers."""

    def __init__(self, config: Config, notifier: Optional[ServiceNotifier] = None) -> None:
        self.config = config
        self.notifier = notifier or ServiceNotifier.from_environment()
        self.watchdog = ProgressWatchdog.from_environment(self.notifier)
        self.time_to_result = TimeToResult()
        self._started_at = time.monotonic()
        self._lot: Optional[LotSpec] = None
        self._lot_summary: Optional[LotSummary] = None
        self._lot_id: Optional[str] = config.station.lot or None
        self.lots = LotStore(config.station.state_dir)  # the lot and its summary, kept across a restart
        self._model_lock = threading.Lock()
        self._predictor: Any = None
        self._manifest: Any = None
        self.outbox: Optional[Outbox] = None
        self.link: Any = None
        self.pipeline: Optional[Pipeline] = None
        self.acquirer: Optional[Acquirer] = None
        self.calibration: Any = None
        self.wavelength: Any = None  # WavelengthStore: the axis offset from the last wavelength check
        self._transport: Any = None
        self._camera: Any = None
        self._faults: Dict[str, str] = {}  # device -> fault message, while an alarm is standing
        self._storage_fault: Optional[str] = None  # the outbox's, as STATUS= last showed it
        self._running = threading.Event()  # set once the pipeline runs; commands wait for it

    # ----- life cycle ------------------------------------------------------------------------
    def command_handlers(self) -> Dict[str, CommandHandler]:
        """`cmd_<name>` for every command of the registry (`COMMAND_NAMES`): the names are written once."""
        return {name: getattr(self, f"cmd_{name}") for name in COMMAND_NAMES}

    def start(self) -> None:
        """Bring every part up in the order the module docstring gives; READY=1 at the end."""
        c = self.config
        self.notifier.status("Starting: opening the outbox")
        self.outbox = Outbox(c.outbox.path, int(c.outbox.quota_mb * MIB))
        self._restore_lot()
        self.notifier.status("Starting: loading the model")
        self._load_model()
        self.watchdog.progress("model loaded")
        # The link never waits for the broker; started before the devices so a device missing at
        # start raises its alarm like any later fault (commands wait for the pipeline: see _wait).
        router = CommandRouter(self.command_handlers(), max_payload_bytes=c.mqtt.max_command_bytes)
        from isic_station.mqtt_link import MqttLink

        self.link = MqttLink(mqtt_settings(c), self.outbox, health_source=self.health_source, commands=router,
                             ha_fibres=self._manifest.fibres, sw_version=__version__,
                             on_delivered=self.time_to_result.acked)
        self.link.start()
        self.report_storage()  # a damaged outbox replaced at open, a sequence gap
        self.notifier.status("Starting: opening the devices")
        self._open_devices()
        self.watchdog.progress("devices opened")
        pipeline = Pipeline(
            self._acquire, self._take_reference, self._process,
            continuous_interval_s=c.mode.interval_s if c.mode.kind == "continuous" else None,
            queue_size=c.pipeline.queue_size, on_progress=self.watchdog.progress,
            stall_after_s=self.watchdog.stall_after_s if self.watchdog.enabled else 30.0,
        )
        pipeline.start()
        self.pipeline = pipeline
        self._running.set()
        self.watchdog.start()
        summary = self.status_line()
        log.info("station %s running: %s", c.station.id, summary)
        self.notifier.ready(summary)

    def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Stop measuring, finish what was measured, flush the outbox, close everything (after a failed
        start-up: close what was opened)."""
        if self._running.is_set():
            self.notifier.stopping("Stopping: finishing measurements and flushing the outbox")
            log.info("stopping: finishing measurements, flushing the outbox (up to %.1f s)", flush_timeout_s)
        else:
            log.debug("start-up did not finish: closing what was opened")
        if self.pipeline is not None:
            self.pipeline.stop(timeout_s=max(5.0, flush_timeout_s))
        if self.link is not None:
            self.link.stop(timeout=flush_timeout_s)
        self.watchdog.stop()
        if self.acquirer is not None:
            self.acquirer.close()
        if self._camera is not None:
            self._camera.close()
        if self._transport is not None:
            self._transport.close()
        with self._model_lock:
            if self._predictor is not None:
                self._predictor.backend.close()
        if self.outbox is not None:
            left = self.outbox.stats().depth
            self.outbox.close()
            log.info("stopped; %d result(s) kept in the outbox for the next start", left)
        self.notifier.close()

    # ----- parts -------------------------------------------------------------------------------
    def _restore_lot(self) -> None:
        """The lot under test before the restart, with its summary so far (from the state folder)."""
        summary = self.lots.load()
        if summary is not None:
            self._lot_summary, self._lot, self._lot_id = summary, summary.spec, summary.spec.lot_id
            log.info("lot %s restored: %d result(s) since %s", summary.spec.lot_id, summary.n, summary.since)

    def _keep_lot(self, summary: LotSummary) -> None:
        try:
            self.lots.save(summary)
        except OSError as exc:
            log.error("lot %s: its summary cannot be kept in %s (%s); a restart would start it again",
                      summary.spec.lot_id, self.lots.path, exc)

    def _load_model(self) -> None:
        from isic_station.inference.predictor import Predictor
        from isic_station.inference.registry import create_backend
        from isic_station.manifest import load_manifest

        manifest = load_manifest(manifest_path(self.config))
        running = self._manifest
        if running is not None and (running.name, running.version) == (manifest.name, manifest.version) \
                and running.identity() != manifest.identity():
            # Same name and version but other labels, preprocessing or graph: results would carry a
            # version that no longer says what produced them (a permuted fibre list reads as another fibre).
            raise ModelError(
                f"model {manifest.name} {manifest.version} changed on disk (manifest sha256 "
                f"{running.sha256[:12]}... -> {manifest.sha256[:12]}..., graph sha256 "
                f"{running.graphs['bimodal'].sha256[:12]}... -> {manifest.graphs['bimodal'].sha256[:12]}...) "
                "without a new version: export it with a new model_version"
            )
        backend = create_backend(self.config.model.backend, manifest,
                                 {"threads": self.config.model.threads, "device_id": self.config.model.device_id})
        with self._model_lock:
            old, self._predictor, self._manifest = self._predictor, Predictor(manifest, backend), manifest
        if old is not None:
            old.backend.close()
        log.info("model %s %s on %s", manifest.name, manifest.version, backend.name)
        if self.config.camera.source:
            from isic_station.preprocess.image import scale_problem

            problem = scale_problem(self.config.camera.um_per_px, manifest.image)
            if problem:
                log.warning("%s", problem)
        calibrated_for = manifest.raw.get("uncertainty", {}).get("data", {}).get("station", {})
        problem = settings_problem(calibrated_for, self.config) if calibrated_for else None
        if problem:
            log.warning("%s", problem)

    def _open_devices(self, camera: bool = True) -> None:
        from isic_drivers.camera import CameraSource
        from isic_drivers.obp.spectrometer import ObpSpectrometer
        from isic_drivers.obp.transport import SerialTransport
        from isic_station.calibration import CalibrationStore
        from isic_station.quality_gate import QualityGate
        from isic_station.sample_label import SampleLabelReader

        c = self.config
        self._transport = SerialTransport(c.spectrometer.port, c.spectrometer.baud,
                                          read_timeout_s=c.spectrometer.timeout_s)
        self.calibration = CalibrationStore(c.calibration.dir, max_age_s=c.calibration.max_age_h * 3600.0)
        self.wavelength = WavelengthStore(c.calibration.dir)
        if c.camera.source and camera:
            self._camera = CameraSource(c.camera.source, c.camera.width, c.camera.height, c.camera.fps,
                                        c.camera.um_per_px)
        self.acquirer = Acquirer(
            ObpSpectrometer(self._transport), self._camera, QualityGate(quality_thresholds(c), c.camera.um_per_px),
            SampleLabelReader() if self._camera is not None else None,
            calibration=self.calibration, integration_us=c.spectrometer.integration_us, context=self._context,
            coadd=c.spectrometer.coadd, frames_per_measurement=c.camera.frames_per_measurement,
            min_signal_fraction=c.quality.min_signal_fraction, image_batch=self._image_batch_builder,
        )
        try:
            self._transport.open()
            self.acquirer.prepare()
        except DeviceError as exc:
            self._device_state("spectrometer", f"not available at start ({exc}); reconnecting")
        else:
            self.calibration.check_pixels(len(self.acquirer.wavelengths_nm))
        if self.calibration.problem is not None:  # a references file moved aside: say so, do not stall
            self._device_state("calibration", self.calibration.problem)
        if self._camera is not None:
            try:
                self._camera.open()
            except DeviceError as exc:
                self._device_state("camera", f"not available at start ({exc}); measuring signal-only")

    def _image_batch_builder(self) -> Any:
        """A builder of the model's image input for one measurement (tiles cut as the frames arrive)."""
        from isic_station.preprocess.image_stream import ImageBatchBuilder

        manifest = self._manifest
        return ImageBatchBuilder(self.config.camera.um_per_px, manifest.image) if manifest is not None else None

    def _context(self) -> Tuple[str, Optional[str]]:
        return self.config.station.id, self._lot_id

    # ----- acquisition thread -------------------------------------------------------------------
    def _acquire(self, job: MeasureJob) -> Measurement:
        """One measurement; a device that starts or stops failing raises or clears a device_fault alarm."""
        assert self.acquirer is not None
        try:
            measurement = self.acquirer.measure(job)
        except DeviceError as exc:
            self._device_state("spectrometer", str(exc))
            raise
        self._device_state("spectrometer", None)
        self._device_state("calibration", None)  # references in use again
        if self._camera is not None:
            self._device_state("camera", "no frame from the camera: measuring signal-only"
                               if "missing_image" in measurement.flags else None)
        return measurement

    def _device_state(self, device: str, fault: Optional[str]) -> None:
        """Publish a device_fault alarm when `device` starts failing, and log when it recovers (once each)."""
        if fault is None:
            if self._faults.pop(device, None) is not None:
                log.warning("%s works again", device)
                self._update_status()
            return
        if device in self._faults:
            return
        self._faults[device] = fault
        log.error("%s fault: %s", device, fault)
        self._update_status()
        if self.link is not None:
            self.link.publish_alarm(build_alarm(
                station=self.config.station.id, kind="device_fault", severity="critical",
                message=f"{device}: {fault}", details={"device": device}))

    def report_storage(self) -> None:
        """Turn the outbox's incidents into storage_fault alarms, and follow its fault in STATUS=."""
        if self.outbox is None or self.link is None:
            return
        incidents = self.outbox.take_incidents()
        for incident in incidents:
            self.link.publish_alarm(build_alarm(
                station=self.config.station.id, kind="storage_fault", severity=incident.severity,
                message=incident.message, details=incident.details), also_now=self.outbox.fault is not None)
        if incidents or (self.outbox.fault is None) != (self._storage_fault is None):
            self._storage_fault = self.outbox.fault
            self._update_status()

    def _update_status(self) -> None:
        """Refresh the STATUS= line for `systemctl status` once the station is running."""
        if self.pipeline is not None:
            self.notifier.status(self.status_line())

    # ----- calibration (runs on the acquisition thread) ---------------------------------------
    def _take_reference(self, job: CalibrateJob) -> Dict[str, Any]:
        assert self.acquirer is not None
        if job.reference == "wavelength":
            return self._check_wavelength()
        reference = self.acquirer.take_reference(job.reference)
        return {"reference": reference.kind, "scans": reference.scans, "integration_us": reference.integration_us,
                "serial": reference.serial, "peak_counts": round(max(reference.counts), 1),
                "file": str(self.calibration.path)}

    def _check_wavelength(self) -> Dict[str, Any]:
        """Measure the wavelength reference tile, fit and keep the axis offset; alarm when it drifted."""
        from isic_drivers.lab.wavelength_standard import CERTIFIED_BANDS_NM

        m = self.acquirer.measure(MeasureJob(origin="command", sample_id="wavelength-reference"))
        fit = fit_offset(m.reflectance, m.wavelengths_nm, CERTIFIED_BANDS_NM, serial=self.acquirer.serial_number)
        answer = self.wavelength.save(fit)
        log.info("wavelength check: axis offset %+.2f nm (drift %+.2f nm since the previous check)",
                 answer["offset_nm"], answer["drift_nm"])
        if answer["flags"] and self.link is not None:
            self.link.publish_alarm(build_alarm(
                station=self.config.station.id, kind="device_fault", severity="warning",
                message=(f"spectrometer: wavelength axis moved {answer['drift_nm']:+.2f} nm since the previous "
                         f"check (limit {answer['drift_limit_nm']} nm); corrected from now on, earlier results "
                         "were measured on the moved axis"),
                details={"device": "spectrometer", "wavelength_drift": answer}))
        return answer

    # ----- inference thread ---------------------------------------------------------------------
    def _process(self, m: Measurement) -> Dict[str, Any]:
        """Measurement -> prediction -> spec check -> result in the outbox (-> MQTT); the measure answer."""
        with self._model_lock:
            predictor, manifest = self._predictor, self._manifest
            axis = self.wavelength.corrected_axis(m.wavelengths_nm) if self.wavelength else m.wavelengths_nm
            prediction = predictor.predict(m.reflectance, axis, m.frames or None,
                                           self.config.camera.um_per_px,
                                           m.image_batch if m.image_params is manifest.image else None,
                                           flags=m.flags)
        flags = set(m.flags)
        if prediction.signal_only:
            flags.add("signal_only")
        if prediction.unknown_fibre:
            flags.add("unknown_fibre")
        if prediction.uncalibrated_flags:
            flags.add("refer_to_lab")
        lot = self._lot
        spec = (check_composition(lot, prediction.composition, prediction.decision_interval_95)
                if lot is not None and lot.lot_id == m.lot_id else None)
        total_ms = (time.monotonic() - m.requested_at) * 1000.0
        doc = build_result(
            station=m.station, sequence=self.outbox.next_sequence(), composition=prediction.composition,
            blend=prediction.blend, confidence=prediction.confidence, uncertainty=prediction.uncertainty,
            flags=flags, model=manifest.identity("signal_only" if prediction.signal_only else "bimodal"),
            backend=prediction.backend,
            timings_ms={"acquire": m.acquire_ms, "preprocess": prediction.timings_ms.get("preprocess_ms", 0.0),
                        "infer": prediction.timings_ms.get("infer_ms", 0.0), "total": total_ms},
            sample_id=m.sample_id, lot_id=m.lot_id, spec=spec, measured_at=m.measured_at,
            interval_95=prediction.interval_95, unknown_fibre_score=prediction.unknown_fibre_score,
        )
        if spec is not None:
            self._count_in_lot(doc, predictor, prediction, spectrum_quality(m.reflectance).noise)
        row = self.link.publish_result(doc)
        self.time_to_result.published(row, m.requested_at, m.acquire_ms)
        for alarm in (out_of_spec_alarm(doc), refer_to_lab_alarm(doc, prediction.uncalibrated_flags)):
            if alarm is not None:
                log.warning("%s", alarm["message"])
                self.link.publish_alarm(alarm)
        self.report_storage()
        log.debug("result %d: %s %s (%.0f ms)", doc["sequence"], doc["blend"], doc["flags"], total_ms)
        return {"sequence": doc["sequence"], "message_id": doc["message_id"], "sample_id": doc["sample_id"],
                "sample_id_source": m.sample_id_source, "composition": doc["composition"], "blend": doc["blend"],
                "flags": doc["flags"]}

    def _count_in_lot(self, doc: Dict[str, Any], predictor: Any, prediction: Any, noise: float) -> None:
        """Add a lot result to the running summary and store it, retained, for the lot topic (before the
        result itself, so the result's publication sends both)."""
        summary = self._lot_summary
        if summary is None or summary.spec.lot_id != doc["lot_id"]:
            return
        calibration = predictor.calibration
        path = "signal_only" if prediction.signal_only else "bimodal"
        summary.add(doc["composition"],
                    calibration.systematic(path, doc["blend"], noise) if calibration is not None else {},
                    prediction.decision_interval_95, doc["spec"]["verdict"], "unknown_fibre" in doc["flags"],
                    blend=doc["blend"])
        self._keep_lot(summary)
        self.outbox.add(self.link.topics.lot, summary.to_dict(doc["station"], utc_iso()), **delivery("lot"))

    # ----- commands (the router's worker thread) -----------------------------------------------
    def _until_running(self) -> Pipeline:
        """The pipeline, once start-up has finished (a command that arrives during start-up waits for it)."""
        if not self._running.wait(COMMAND_TIMEOUT_S) or self.pipeline is None:
            raise CommandError(f"the station did not finish starting within {COMMAND_TIMEOUT_S:.0f} s")
        return self.pipeline

    def _wait(self, job: Any, what: str) -> Dict[str, Any]:
        pipeline = self._until_running()
        try:
            future = pipeline.submit(job)
        except PipelineBusy as exc:
            raise CommandError(f"station busy: {exc}") from None
        try:
            return future.result(timeout=COMMAND_TIMEOUT_S)
        except StationError as exc:
            raise CommandError(f"{what} failed: {exc}") from None
        except FutureTimeout:  # not the builtin TimeoutError before Python 3.11
            raise CommandError(f"{what} did not finish within {COMMAND_TIMEOUT_S:.0f} s") from None

    def cmd_measure(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Take one measurement now (optionally for a named sample) and answer with its result's sequence."""
        return self._wait(MeasureJob(origin="command", sample_id=payload.get("sample_id")), "measurement")

    def cmd_calibrate(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Take a dark or white reference on the acquisition thread."""
        return self._wait(CalibrateJob(payload["reference"]), f"{payload['reference']} calibration")

    def cmd_set_lot(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Check results against this lot's declared composition from now on."""
        try:
            spec = LotSpec.from_dict(payload, known_fibres=self._manifest.fibres)
        except InvalidLotSpec as exc:
            raise CommandError(str(exc)) from None
        self._lot_summary = LotSummary(spec, utc_iso())
        self._lot, self._lot_id = spec, spec.lot_id
        self._keep_lot(self._lot_summary)
        log.info("lot %s: declared %s, tolerance %g pp", spec.lot_id, spec.composition, spec.tolerance_pp)
        return spec.to_dict()

    def cmd_reload_model(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Load the configured model again (after an update); the old one keeps running if the new one fails."""
        try:
            self._load_model()
        except StationError as exc:
            raise CommandError(f"model not reloaded, the previous one keeps running: {exc}") from None
        self.link.set_ha_fibres(self._manifest.fibres)
        return {"model": self._manifest.identity(),
                "backend": self._predictor.backend.name, "fibres": list(self._manifest.fibres)}

    def cmd_status(self, payload: Dict[str, Any]) -> Dict[str, Any]:
        """Mode, lot, model, devices, pipeline counters (skipped, rejected), outbox and time-to-result."""
        pipeline = self._until_running()
        stats = pipeline.stats.snapshot()
        return {
            "station": self.config.station.id,
            "mode": self.config.mode.kind,
            "interval_s": self.config.mode.interval_s if self.config.mode.kind == "continuous" else None,
            "lot": self._lot.to_dict() if self._lot is not None else {"lot_id": self._lot_id},
            "model": {"name": self._manifest.name, "version": self._manifest.version},
            "backend": self._predictor.backend.name,
            "devices": self.acquirer.device_states() if self.acquirer else {},
            "calibration": self.calibration_ages(),
            "pipeline": {**stats["counts"], **pipeline.depth, "results_per_minute": stats["results_per_minute"],
                         "inference_ms": stats["inference_ms"], "acquire_ms": stats["acquire_ms"]},
            "time_to_result_ms": self.time_to_result.summary(),
            "outbox": self.outbox.stats().to_dict(),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
        }

    # ----- health (called by the MQTT link's thread) ------------------------------------------
    def calibration_ages(self) -> Dict[str, Optional[float]]:
        """Seconds since the dark and white references were taken (None when missing)."""
        return reference_ages(self.calibration.references if self.calibration is not None else {})

    def health_source(self) -> Dict[str, Any]:
        """The station's part of the health document (the link adds outbox and MQTT figures)."""
        stats = (self.pipeline.stats if self.pipeline is not None else PipelineStats()).snapshot()
        self.report_storage()  # the disk may have filled or come back without a measurement
        return {
            "uptime_s": time.monotonic() - self._started_at,
            "results": {"total": stats["counts"]["results"], "per_minute": stats["results_per_minute"]},
            "inference_ms": stats["inference_ms"],
            "devices": self.acquirer.device_states() if self.acquirer else {},
            "calibration": self.calibration_ages(),
        }

    def status_line(self) -> str:
        """One line for `systemctl status`: mode, model, backend and what is degraded."""
        c = self.config
        mode = f"continuous every {c.mode.interval_s:g} s" if c.mode.kind == "continuous" else "triggered"
        backend = self._predictor.backend
        text = f"{mode}; model {self._manifest.name} {self._manifest.version} on {backend.name}"
        if backend.fallback_reason:
            text += f" (not the NPU: {backend.fallback_reason})"
        if self._faults:
            text += "; DEGRADED: " + "; ".join(f"{k}: {v}" for k, v in self._faults.items())
        if self.outbox is not None and self.outbox.fault is not None:
            text += f"; STORAGE FAULT: {self.outbox.fault} ({self.outbox.stats().held} result(s) held in memory)"
        return text


def run_daemon(config: Config, flush_timeout_s: float = 10.0) -> int:
    """Run the station until SIGTERM or SIGINT, then stop cleanly. Returns the exit code."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    station = Station(config)
    try:
        station.start()
        while not stop.wait(1.0):
            pass
    finally:
        station.stop(flush_timeout_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def calibrate_once(config: Config, reference: str) -> str:
    """Take one reference with the spectrometer outside the daemon (`isic-station calibrate`)."""
    station = Station(config, notifier=ServiceNotifier(None))
    station._open_devices(camera=False)
    try:
        if "spectrometer" in station._faults:
            raise DeviceError(f"spectrometer on {config.spectrometer.port} cannot be used: "
                              f"{station._faults['spectrometer']}")
        saved = station._take_reference(CalibrateJob(reference))
    finally:
        station._transport.close()
    if reference == "wavelength":
        return (f"wavelength axis offset {saved['offset_nm']:+.2f} nm from {len(saved['bands_nm'])} bands "
                f"(scatter {saved['scatter_nm']:.2f} nm; drift {saved['drift_nm']:+.2f} nm since the previous check"
                + (", WAVELENGTH DRIFT" if saved["flags"] else "") + f") saved to {saved['file']}")
    return (f"{reference} reference saved to {saved['file']}: {saved['scans']} scans at {saved['integration_us']} us, "
            f"peak {saved['peak_counts']:.0f} counts, instrument {saved['serial']}")

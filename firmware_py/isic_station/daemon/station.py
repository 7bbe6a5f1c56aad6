"""The station daemon: runs the parts it is given, wires them together and answers commands.

    spectrometer + camera -> Acquirer -> Pipeline (acquisition, inference threads) -> result
    result -> MqttLink.publish_result (durable Outbox first, then MQTT) ; out-of-spec / refer-to-lab -> alarm
    lot results -> LotSummary -> retained <prefix>/<station>/lot (through the Outbox)
    MQTT cmd/<name> -> CommandRouter -> CommandHandlers ; health <- Station.health_source()

Its parts come from `wiring.build_parts(config)` (or, in a test or a bench, from the caller):
`Station(config, parts)`. Start-up order is what systemd's READY=1 promises: outbox (state
directory writable), model and backend (sha256 checked), MQTT link (it never waits for the broker:
results wait in the outbox), devices opened and prepared, pipeline running. A device that is absent
at start does not stop the station: it starts degraded, says so in STATUS= and with a device_fault
alarm, and the drivers keep reconnecting; STATUS= follows every later fault and recovery too.
Shutdown (SIGTERM/SIGINT): STOPPING=1, stop taking measurements, finish those already taken,
flush the outbox to the broker within the flush timeout, disconnect, close the devices.
"""

import logging
import signal
import threading
import time
from collections import OrderedDict
from types import FrameType
from typing import Any, Dict, List, Mapping, Optional, Tuple

from isic_common.errors import DeviceError
from isic_common.percentile import percentile
from isic_drivers.lab.wavelength_standard import CERTIFIED_BANDS_NM
from isic_station import __version__
from isic_station.acquisition.acquirer import Acquirer, Measurement
from isic_station.acquisition.calibration import CalibrationStore, reference_ages
from isic_station.acquisition.wavelength_check import WavelengthStore, fit_offset
from isic_station.config import Config
from isic_station.daemon.command_handlers import CommandHandlers, JobRunner, LotState
from isic_station.daemon.lot_store import LotStore
from isic_station.daemon.model_slot import ModelSlot
from isic_station.daemon.pipeline import CalibrateJob, MeasureJob, Pipeline, PipelineStats
from isic_station.daemon.sd_notify import ProgressWatchdog, ServiceNotifier
from isic_station.daemon.spec_check import check_composition
from isic_station.daemon.wiring import StationParts, build_parts, make_acquirer
from isic_station.inference.base import Backend, Prediction
from isic_station.inference.predictor import Predictor
from isic_station.manifest import Manifest
from isic_station.messaging.commands import CommandRouter
from isic_station.messaging.mqtt_link import MqttLink
from isic_station.messaging.outbox import Outbox
from isic_station.messaging.results import build_alarm, build_result, out_of_spec_alarm, refer_to_lab_alarm, utc_iso
from isic_station.preprocess.image_stream import ImageBatchBuilder
from isic_station.schemas import delivery
from isic_station.uncertainty import SpectrumQuality, spectrum_quality

log = logging.getLogger(__name__)


def take_reference(acquirer: Acquirer, wavelength: WavelengthStore, kind: str) -> Dict[str, Any]:
    """Take a dark or white reference, or check the wavelength axis on its reference tile (keeping the
    fitted offset); the answer of the `calibrate` command and of `isic-station calibrate`."""
    if kind == "wavelength":
        m = acquirer.measure(MeasureJob(origin="command", sample_id="wavelength-reference"))
        fit = fit_offset(m.reflectance, m.wavelengths_nm, CERTIFIED_BANDS_NM, serial=acquirer.serial_number)
        answer = wavelength.save(fit)
        log.info("wavelength check: axis offset %+.2f nm (drift %+.2f nm since the previous check)",
                 answer["offset_nm"], answer["drift_nm"])
        return answer
    reference = acquirer.take_reference(kind)
    return {"reference": reference.kind, "scans": reference.scans, "integration_us": reference.integration_us,
            "serial": reference.serial, "peak_counts": round(max(reference.counts), 1),
            "file": str(acquirer.calibration.path)}


def status_line(config: Config, manifest: Manifest, backend: Backend, faults: Mapping[str, str],
                outbox: Optional[Outbox]) -> str:
    """One line for `systemctl status`: mode, model, backend and what is degraded."""
    c = config
    mode = f"continuous every {c.mode.interval_s:g} s" if c.mode.kind == "continuous" else "triggered"
    text = f"{mode}; model {manifest.name} {manifest.version} on {backend.name}"
    if backend.fallback_reason:
        text += f" (not the NPU: {backend.fallback_reason})"
    if faults:
        text += "; DEGRADED: " + "; ".join(f"{k}: {v}" for k, v in faults.items())
    if outbox is not None and outbox.fault is not None:
        text += f"; STORAGE FAULT: {outbox.fault} ({outbox.stats().held} result(s) held in memory)"
    return text


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
    """The daemon object: runs the parts it is given; `start()`, `stop()`, and its command handlers."""

    def __init__(self, config: Config, parts: StationParts, notifier: Optional[ServiceNotifier] = None) -> None:
        self.config = config
        self.parts = parts
        self.notifier = notifier or ServiceNotifier.from_environment()
        self.watchdog = ProgressWatchdog.from_environment(self.notifier)
        self.time_to_result = TimeToResult()
        self.model = ModelSlot(parts.model)
        self.lot = LotState(lot_id=config.station.lot or None, store=LotStore(config.station.state_dir))
        self.jobs = JobRunner()
        self.commands = CommandHandlers(self.jobs, self.model, self.lot, model_loaded=self._model_reloaded,
                                        status=self.status_document)
        self._started_at = time.monotonic()
        self.outbox: Optional[Outbox] = None
        self.link: Optional[MqttLink] = None
        self.pipeline: Optional[Pipeline] = None
        self.acquirer: Optional[Acquirer] = None
        self.calibration: Optional[CalibrationStore] = None  # dark/white references, opened with the devices
        self.wavelength: Optional[WavelengthStore] = None  # the axis offset from the last wavelength check
        self._faults: Dict[str, str] = {}  # device -> fault message, while an alarm is standing
        self._storage_fault: Optional[str] = None  # the outbox's, as STATUS= last showed it
        self._room_unread_alarmed = False  # a model taking the room got no reading (alarmed once until one comes)

    # ----- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Bring every part up in the order the module docstring gives; READY=1 at the end."""
        c = self.config
        self.notifier.status("Starting: opening the outbox")
        self.outbox = self.parts.open_outbox()
        self.lot.restore()
        self.notifier.status("Starting: loading the model")
        self.model.load()
        self.watchdog.progress("model loaded")
        # The link never waits for the broker; started before the devices so a device missing at
        # start raises its alarm like any later fault (commands wait for the pipeline: JobRunner).
        router = CommandRouter(self.commands.handlers(), max_payload_bytes=c.mqtt.max_command_bytes)
        self.link = MqttLink(self.parts.link_settings(), self.outbox, health_source=self.health_source,
                             commands=router, ha_fibres=self.model.manifest.fibres, sw_version=__version__,
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
        self.jobs.started(pipeline)
        self.watchdog.start()
        summary = self.status_line()
        log.info("station %s running: %s", c.station.id, summary)
        self.notifier.ready(summary)

    def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Stop measuring, finish what was measured, flush the outbox, close everything (after a failed
        start-up: close what was opened)."""
        if self.pipeline is not None:
            self.notifier.stopping("Stopping: finishing measurements and flushing the outbox")
            log.info("stopping: finishing measurements, flushing the outbox (up to %.1f s)", flush_timeout_s)
            self.pipeline.stop(timeout_s=max(5.0, flush_timeout_s))
        else:
            log.debug("start-up did not finish: closing what was opened")
        if self.link is not None:
            self.link.stop(timeout=flush_timeout_s)
        self.watchdog.stop()
        if self.acquirer is not None:
            self.acquirer.close()
        if self.parts.camera is not None:
            self.parts.camera.close()
        self.parts.spectrometer.transport.close()
        self.model.close()
        if self.outbox is not None:
            left = self.outbox.stats().depth
            self.outbox.close()
            log.info("stopped; %d result(s) kept in the outbox for the next start", left)
        self.notifier.close()

    # ----- parts -------------------------------------------------------------------------------
    def _model_reloaded(self, manifest: Manifest) -> None:
        """After `reload_model`: Home Assistant's entities follow the new model's fibres."""
        if self.link is not None:
            self.link.set_ha_fibres(manifest.fibres)

    def _open_devices(self) -> None:
        parts = self.parts
        self.calibration = calibration = parts.open_calibration()
        self.wavelength = parts.open_wavelength()
        self.acquirer = make_acquirer(self.config, parts, calibration, self._context, self._image_batch_builder)
        try:
            parts.spectrometer.transport.open()
            self.acquirer.prepare()
        except DeviceError as exc:
            self._device_state("spectrometer", f"not available at start ({exc}); reconnecting")
        else:
            calibration.check_pixels(len(self.acquirer.wavelengths_nm))
        if calibration.problem is not None:  # a references file moved aside: say so, do not stall
            self._device_state("calibration", calibration.problem)
        if parts.camera is not None:
            try:
                parts.camera.open()
            except DeviceError as exc:
                self._device_state("camera", f"not available at start ({exc}); measuring signal-only")

    def _image_batch_builder(self) -> Optional[ImageBatchBuilder]:
        """A builder of the model's image input for one measurement (tiles cut as the frames arrive)."""
        if not self.model.loaded:
            return None
        return self.model.predictor.image_builder(self.config.camera.um_per_px)

    def _context(self) -> Tuple[str, Optional[str]]:
        return self.config.station.id, self.lot.lot_id

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
        if self.parts.camera is not None:
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
        assert self.acquirer is not None and self.wavelength is not None
        answer = take_reference(self.acquirer, self.wavelength, job.reference)
        if job.reference == "wavelength" and answer["flags"] and self.link is not None:
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
        assert self.outbox is not None and self.link is not None and self.wavelength is not None
        with self.model.using() as predictor:
            manifest = predictor.manifest
            axis = self.wavelength.corrected_axis(m.wavelengths_nm)
            prediction = predictor.predict(m.reflectance, axis, m.frames or None, self.config.camera.um_per_px,
                                           m.image, flags=m.flags, temperature_c=m.temperature_c)
        condition_problem = manifest.condition_problem(m.temperature_c)
        room_problem = manifest.unread_room_problem(m.temperature_c)
        self._check_room_reading(room_problem)
        flags = set(m.flags) | ({"outside_trained_range"} if condition_problem else set())
        if room_problem:
            flags.add("no_room_reading")
        if prediction.signal_only:
            flags.add("signal_only")
        if prediction.unknown_fibre:
            flags.add("unknown_fibre")
        if prediction.uncalibrated_flags:
            flags.add("refer_to_lab")
        if predictor.settings_problem:
            flags.add("uncalibrated_settings")
        lot = self.lot.spec
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
            temperature_c=m.temperature_c,
        )
        if spec is not None:
            self._count_in_lot(doc, predictor, prediction, spectrum_quality(m.reflectance))
        row = self.link.publish_result(doc)
        self.time_to_result.published(row, m.requested_at, m.acquire_ms)
        for alarm in (out_of_spec_alarm(doc), refer_to_lab_alarm(doc, prediction.uncalibrated_flags, condition_problem,
                                                                 predictor.settings_problem, room_problem)):
            if alarm is not None:
                log.warning("%s", alarm["message"])
                self.link.publish_alarm(alarm)
        self.report_storage()
        log.debug("result %d: %s %s (%.0f ms)", doc["sequence"], doc["blend"], doc["flags"], total_ms)
        return {"sequence": doc["sequence"], "message_id": doc["message_id"], "sample_id": doc["sample_id"],
                "sample_id_source": m.sample_id_source, "composition": doc["composition"], "blend": doc["blend"],
                "flags": doc["flags"]}

    def _count_in_lot(self, doc: Dict[str, Any], predictor: Predictor, prediction: Prediction,
                      quality: SpectrumQuality) -> None:
        """Add a lot result to the running summary and store it, retained, for the lot topic (before the
        result itself, so the result's publication sends both)."""
        assert self.outbox is not None and self.link is not None
        summary = self.lot.summary
        if summary is None or summary.spec.lot_id != doc["lot_id"]:
            return
        calibration = predictor.calibration
        path = "signal_only" if prediction.signal_only else "bimodal"
        summary.add(doc["composition"],
                    calibration.systematic(path, doc["blend"], quality.noise, quality.level,
                                           declared=summary.spec.composition)
                    if calibration is not None else {},
                    prediction.decision_interval_95, doc["spec"]["verdict"], blend=doc["blend"], flags=doc["flags"])
        self.lot.keep()
        self.outbox.add(self.link.topics.lot, summary.to_dict(doc["station"], utc_iso()), **delivery("lot"))

    def _check_room_reading(self, room_problem: Optional[str]) -> None:
        """A model taking the room as an input answers without it, but worse away from its reference room, and
        with no reading no range check flags a cold one: each such result is flagged `no_room_reading` and
        referred, and a person must give the spectrometer a sensor (or the station a model without the
        input). One warning alarm, again only after a reading came back."""
        if room_problem is None:
            self._room_unread_alarmed = False
            return
        if self._room_unread_alarmed or self.link is None:
            return
        self._room_unread_alarmed = True
        message = (f"spectrometer: {room_problem} (a spectrometer with a sensor, or a model without the input)")
        log.warning("%s", message)
        self.link.publish_alarm(build_alarm(station=self.config.station.id, kind="device_fault", severity="warning",
                                            message=message, details={"device": "spectrometer"}))

    # ----- status and health ------------------------------------------------------------------
    def status_document(self, pipeline: Pipeline) -> Dict[str, Any]:
        """The `status` command's data: mode, lot, model, devices, pipeline counters, outbox, time-to-result."""
        assert self.outbox is not None
        stats = pipeline.stats.snapshot()
        predictor = self.model.predictor
        return {
            "station": self.config.station.id,
            "mode": self.config.mode.kind,
            "interval_s": self.config.mode.interval_s if self.config.mode.kind == "continuous" else None,
            "lot": self.lot.to_dict(),
            "model": {"name": predictor.manifest.name, "version": predictor.manifest.version},
            "backend": predictor.backend.name,
            "devices": self.acquirer.device_states() if self.acquirer else {},
            "calibration": self.calibration_ages(),
            "pipeline": {**stats["counts"], **pipeline.depth, "results_per_minute": stats["results_per_minute"],
                         "inference_ms": stats["inference_ms"], "acquire_ms": stats["acquire_ms"]},
            "time_to_result_ms": self.time_to_result.summary(),
            "outbox": self.outbox.stats().to_dict(),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
        }

    def calibration_ages(self) -> Dict[str, Optional[float]]:
        """Seconds since the dark and white references were taken (None when missing)."""
        return reference_ages(self.calibration.references if self.calibration is not None else {})

    def health_source(self) -> Dict[str, Any]:
        """The station's part of the health document (the link adds outbox and MQTT figures); called by
        the MQTT link's thread."""
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
        predictor = self.model.predictor
        return status_line(self.config, predictor.manifest, predictor.backend, self._faults, self.outbox)


def run_daemon(config: Config, flush_timeout_s: float = 10.0) -> int:
    """Run the station until SIGTERM or SIGINT, then stop cleanly. Returns the exit code."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Optional[FrameType]) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    station = Station(config, build_parts(config))
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
    parts = build_parts(config, camera=False)
    calibration = parts.open_calibration()
    acquirer = make_acquirer(config, parts, calibration,
                             context=lambda: (config.station.id, config.station.lot or None))
    transport = parts.spectrometer.transport
    try:
        try:
            transport.open()
            acquirer.prepare()
        except DeviceError as exc:
            raise DeviceError(f"spectrometer on {config.spectrometer.port} cannot be used: {exc}") from None
        calibration.check_pixels(len(acquirer.wavelengths_nm))
        saved = take_reference(acquirer, parts.open_wavelength(), reference)
    finally:
        acquirer.close()
        transport.close()
    if reference == "wavelength":
        return (f"wavelength axis offset {saved['offset_nm']:+.2f} nm from {len(saved['bands_nm'])} bands "
                f"(scatter {saved['scatter_nm']:.2f} nm; drift {saved['drift_nm']:+.2f} nm since the previous check"
                + (", WAVELENGTH DRIFT" if saved["flags"] else "") + f") saved to {saved['file']}")
    return (f"{reference} reference saved to {saved['file']}: {saved['scans']} scans at {saved['integration_us']} us, "
            f"peak {saved['peak_counts']:.0f} counts, instrument {saved['serial']}")

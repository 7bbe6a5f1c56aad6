"""`isic-station doctor`: checks what a station needs, one line per check, and says what to do.

For a technician at a new or failing station: each check opens the real thing (the serial port
and the instrument behind it, the camera and one frame through the quality gate, the model files
against their sha256, the inference backend, the broker with the configured TLS and credentials,
the state directory and the calibration) and prints `OK` or `FAIL` with the detail, and for a
failure the most likely fix. Checks do not depend on each other, so one run shows every problem.
Run it while the service is stopped: the service holds the serial port.
"""

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from isic_common.errors import EX_UNAVAILABLE, StationError
from isic_station.acquisition.calibration import reference_ages
from isic_station.acquisition.quality_gate import assess
from isic_station.config import Config
from isic_station.daemon.wiring import (
    ModelLoader,
    make_calibration_store,
    make_camera,
    make_spectrometer,
    mqtt_settings,
    quality_thresholds,
)
from isic_station.inference.acl_backend import AclBackend, acl_importable
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.inference.registry import om_files_present
from isic_station.manifest import Manifest, verify_graph_file
from isic_station.messaging.mqtt_link import MqttSettings
from isic_station.preprocess.image import scale_problem
from isic_station.uncertainty import settings_note, settings_problem


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: what was checked, whether it passed, what was seen, what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """`OK   name: detail` or `FAIL name: detail -> fix`."""
        text = f"{'OK  ' if self.ok else 'FAIL'} {self.name:<12} {self.detail}"
        return text if self.ok or not self.fix else f"{text}\n     {'':<12} -> {self.fix}"


def _guard(name: str, fix: str, check: Callable[[], str]) -> CheckResult:
    """Run one check; any exception becomes a FAIL with its message and `fix`."""
    try:
        return CheckResult(name, True, check())
    except (StationError, OSError, ValueError, RuntimeError) as exc:
        return CheckResult(name, False, str(exc) or type(exc).__name__, fix)


def check_serial(config: Config) -> CheckResult:
    """Open the spectrometer's port and ask the instrument for its serial number and wavelength axis."""
    spec = config.spectrometer

    def probe() -> str:
        if not spec.port.startswith("/dev/pts/") and not os.path.exists(spec.port):
            raise OSError(f"{spec.port} does not exist")
        instrument = make_spectrometer(config)
        with instrument.transport as transport:
            transport.open()
            serial_number = instrument.serial_number()
            axis = instrument.wavelengths()
        return f"{spec.port}: spectrometer {serial_number}, {len(axis)} pixels, {axis[0]:.0f}-{axis[-1]:.0f} nm"

    return _guard("spectrometer", f"check the USB cable and power, that {spec.port} exists (udev rule, "
                  "`ls -l /dev/isic-*`), that the station's user is in group dialout, that the service is "
                  "stopped (it holds the port), and spectrometer.baud", probe)


def check_camera(config: Config) -> CheckResult:
    """Open the camera, read one frame and put it through the quality gate."""
    cam = config.camera
    if not cam.source:
        return CheckResult("camera", True, "none configured: signal-only measurements")

    def probe() -> str:
        source = make_camera(config)
        assert source is not None  # camera.source is set
        with source:
            frame = source.read()
        if frame is None:
            raise OSError(f"camera {cam.source} gave no frame")
        quality = assess(frame.image, quality_thresholds(config), cam.um_per_px)
        height, width = frame.image.shape[:2]
        verdict = "passes the quality gate" if quality.passed else f"fails the gate: {', '.join(quality.reasons)}"
        return f"{cam.source}: {width}x{height} frame, focus {quality.focus:.0f}, {verdict}"

    return _guard("camera", f"check the cable, that {cam.source} exists (`v4l2-ctl --list-devices`), that the "
                  "station's user is in group video, and camera.width/height/fps", probe)


def _manifest_first(loader: ModelLoader) -> Manifest:
    """The manifest, for a check that needs the model first (OSError saying so when it cannot be read)."""
    try:
        return loader.manifest()
    except StationError as exc:
        raise OSError(f"not tried: it needs the model first ({exc})") from None


def check_model(config: Config) -> CheckResult:
    """Load the manifest and check every graph file against its sha256."""

    def probe() -> str:
        manifest = ModelLoader(config).manifest()
        for graph in manifest.graphs.values():
            verify_graph_file(graph)
        shas = ", ".join(f"{g.key} {g.sha256[:12]}" for g in manifest.graphs.values())
        return f"{manifest.name} {manifest.version}: sha256 ok ({shas})"

    return _guard("model", "reinstall the package (its shipped model), or point model.manifest at a manifest "
                  "written by `isic-model export` with its .onnx/.om files beside it", probe)


def check_scale(config: Config) -> CheckResult:
    """The camera's configured µm/px lies in the range the model's manifest accepts."""

    def probe() -> str:
        if not config.camera.source:
            return "no camera: the image path is not used"
        image = _manifest_first(ModelLoader(config)).image
        problem = scale_problem(config.camera.um_per_px, image)
        if problem:
            raise ValueError(problem)
        accepted = image.get("camera_um_per_px_range")
        where = f" (accepted {accepted[0]:g}-{accepted[1]:g})" if accepted else ""
        return (f"camera.um_per_px = {config.camera.um_per_px:g}{where}, resampled to the model's "
                f"{float(image['um_per_px']):g} µm/px")

    return _guard("scale", "measure the microscope's scale with a stage micrometer and set camera.um_per_px "
                  "to it; if it is right, the objective does not suit this model", probe)


def check_settings(config: Config) -> CheckResult:
    """The station measures at least as much as the data its model's uncertainty calibration was fitted on."""

    def probe() -> str:
        manifest = _manifest_first(ModelLoader(config))
        calibrated = manifest.calibration_data.get("station")
        if not calibrated:
            return "the model carries no uncertainty calibration: results have no calibrated intervals"
        problem = settings_problem(calibrated, config)
        if problem:
            raise ValueError(problem)
        return "the uncertainty calibration holds here: " + (settings_note(calibrated, config)
                                                              or "the station measures as its data were taken")

    return _guard("settings", "measure with at least the calibration's scans, frames and field (the manifest's "
                  "uncertainty.data.station), or calibrate for these settings; until then every result is "
                  "flagged uncalibrated_settings and referred to the lab", probe)


def check_room(config: Config) -> CheckResult:
    """The room by the spectrometer's temperature sensor, within what the model was trained and calibrated in."""
    spec = config.spectrometer

    def probe() -> str:
        manifest = _manifest_first(ModelLoader(config))
        instrument = make_spectrometer(config)
        with instrument.transport as transport:
            transport.open()
            reading = instrument.temperature_c()
        problem = manifest.unread_room_problem(reading)
        if problem:  # how much worse: `isic-model evaluate --no-temperature` (README, "Version 9t")
            raise ValueError(f"the spectrometer has no temperature sensor: {problem}; every result is flagged "
                             "no_room_reading and referred to the lab")
        if reading is None:
            return "the spectrometer has no temperature sensor: the room is not checked"
        room = reading - spec.temperature_offset_c
        problem = manifest.condition_problem(room)
        if problem:
            raise ValueError(problem)
        return (f"room {room:.1f} degC by the spectrometer's sensor (offset {spec.temperature_offset_c:g}), "
                "within the model's range")

    return _guard("room", "bring the probe's room within the range, or, if a room thermometer disagrees, set "
                  "spectrometer.temperature_offset_c to what the sensor reads above it; results outside are "
                  "flagged outside_trained_range and referred to the lab. Without a sensor: a spectrometer "
                  "with one, or a model that does not take the room (model.manifest)", probe)


def check_backend(config: Config) -> CheckResult:
    """Start the configured inference backend with the model."""

    def probe() -> str:
        loader = ModelLoader(config)
        manifest = _manifest_first(loader)
        started = time.monotonic()
        backend = loader.load(manifest).backend
        try:
            return f"{backend.name} loaded in {time.monotonic() - started:.1f} s (asked for {config.model.backend})"
        finally:
            backend.close()

    return _guard("backend", "for acl: source CANN's set_env.sh (the service's environment file) and check "
                  "`npu-smi info`; for onnxruntime: install the runtime extra (pip install 'isic-station[runtime]')",
                  probe)


def check_broker(config: Config, timeout_s: float = 5.0) -> CheckResult:
    """Connect to the broker with the configured address, TLS and credentials."""
    m = config.mqtt

    def probe() -> str:
        return probe_broker(mqtt_settings(config), timeout_s)

    return _guard("broker", f"check that the broker runs and answers on {m.host}:{m.port} (firewall, "
                  "mqtt.host/port), mqtt.tls and ca_file, and the user name and password", probe)


def probe_broker(settings: MqttSettings, timeout_s: float) -> str:
    """Connect once with the link's settings under a client id of its own (so a running station is not
    kicked off), wait for the CONNACK, disconnect. Publishes nothing."""
    answer: Dict[str, Any] = {}
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        answer["reason"] = reason
        connected.set()

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=f"isic-doctor-{settings.station_id}-{os.getpid()}")
    client.on_connect = on_connect
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(ca_certs=settings.ca_file, certfile=settings.cert_file, keyfile=settings.key_file)
    started = time.monotonic()
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except OSError as exc:
        raise OSError(f"{settings.host}:{settings.port}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise OSError(f"no CONNACK from {settings.host}:{settings.port} within {timeout_s:g} s")
        if answer["reason"].is_failure:
            raise OSError(f"{settings.host}:{settings.port} refused the connection: {answer['reason']}")
    finally:
        client.disconnect()
        client.loop_stop()
    tls = " with TLS" if settings.tls else ""
    user = f" as {settings.username}" if settings.username else ""
    return f"{settings.host}:{settings.port}{tls}{user}: connected in {(time.monotonic() - started) * 1000:.0f} ms"


def check_state(config: Config) -> CheckResult:
    """The state directory is writable and the calibration is present and fresh."""

    def probe() -> str:
        state = config.station.state_dir
        existing = next(p for p in (state, *state.parents) if p.exists())  # doctor creates nothing
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise OSError(f"{existing} is not a writable directory")
        note = "" if existing == state else f" ({state} does not exist yet: the station creates it)"
        store = make_calibration_store(config, read_only=True)
        if store.problem:
            raise OSError(store.problem)
        ages = {k.replace("_age_s", ""): age for k, age in reference_ages(store.references).items()}
        missing = [k for k, age in ages.items() if age is None]
        if missing:
            raise OSError(f"no {' and no '.join(missing)} reference in {config.calibration.dir}{note}")
        stale = [k for k, age in ages.items() if age is not None and age > config.calibration.max_age_h * 3600]
        text = ", ".join(f"{k} {age / 3600:.1f} h old" for k, age in ages.items())
        if stale:
            raise OSError(f"stale reference(s): {text} (limit {config.calibration.max_age_h:g} h)")
        return f"{state} writable; calibration {text}"

    return _guard("state", "take the references: `isic-station calibrate dark --config FILE` (probe covered), "
                  "then `... calibrate white` (white tile under the probe); state_dir must be writable", probe)


# fp16 against fp32: half precision keeps ~3 significant digits, and the .om computes in fp16 inside
# (ATC --precision_mode=allow_fp32_to_fp16). Our own bound, not a documented one: |NPU - CPU| <=
# 0.02 + 2 % of |CPU| for every output element.
NPU_ATOL, NPU_RTOL = 0.02, 0.02
NPU_FIX = ("on an Atlas board: /etc/isic-station/cann.env in the environment (or CANN's set_env.sh sourced), "
           "`npu-smi info` shows the NPU, the user in group HwHiAiUser; compile the .om with "
           "`isic-model build-om --record` from the checkout")


def check_npu(config: Config, seed: int = 0) -> List[CheckResult]:
    """Each graph on the NPU and on ONNX Runtime with the same (seeded) inputs, compared within fp16 tolerance."""
    if not acl_importable():
        return [CheckResult("npu", False, "no NPU present here: pyACL (CANN's acl module) does not import", NPU_FIX)]
    try:
        manifest = ModelLoader(config).manifest()
    except StationError as exc:
        return [CheckResult("npu", False, f"not tried: it needs the model first ({exc})", NPU_FIX)]
    if not om_files_present(manifest):
        return [CheckResult("npu", False, f"no compiled .om recorded in {manifest.path}", NPU_FIX)]
    npu = AclBackend(manifest, {"device_id": config.model.device_id})
    cpu = OnnxRuntimeBackend(manifest, {"threads": config.model.threads})
    try:
        npu.load()
        cpu.load()
    except (StationError, OSError) as exc:
        npu.close()
        cpu.close()
        return [CheckResult("npu", False, f"the NPU did not start: {exc}", NPU_FIX)]
    rng = np.random.default_rng(seed)
    results = []
    try:
        for key, graph in manifest.graphs.items():
            # Standardised inputs, as the preprocessing hands them on (zero mean, unit spread).
            inputs = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in graph.inputs}
            try:
                on_npu, on_cpu = npu.run(key, inputs), cpu.run(key, inputs)
            except StationError as exc:
                results.append(CheckResult(f"npu/{key}", False, str(exc), NPU_FIX))
                continue
            worst = max(float(np.max(np.abs(on_npu[n] - on_cpu[n]) - NPU_RTOL * np.abs(on_cpu[n]))) for n in on_cpu)
            largest = max(float(np.max(np.abs(on_npu[n] - on_cpu[n]))) for n in on_cpu)
            detail = (f"max |NPU - CPU| {largest:.4f} over {', '.join(sorted(on_cpu))} "
                      f"(allowed {NPU_ATOL:g} + {NPU_RTOL:.0%} of |CPU|)")
            results.append(CheckResult(f"npu/{key}", worst <= NPU_ATOL, detail,
                                       "recompile the .om for this board's SoC and CANN (`isic-model build-om`)"))
    finally:
        npu.close()
        cpu.close()
    return results


def run_checks(config: Config, only: Optional[List[str]] = None) -> List[CheckResult]:
    """Every check (or those named in `only`), in the order a technician would go through them."""
    checks = {
        "spectrometer": check_serial, "camera": check_camera, "model": check_model, "scale": check_scale,
        "settings": check_settings, "room": check_room, "backend": check_backend,
        "broker": check_broker, "state": check_state,
    }
    return [check(config) for name, check in checks.items() if only is None or name in only]


def doctor(config: Config, npu: bool = False) -> int:
    """Print one line per check (with `npu`: per graph, NPU against CPU); 0 when all passed, else 69."""
    results = check_npu(config) if npu else run_checks(config)
    for result in results:
        print(result.line(), flush=True)
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {', '.join(failed)}"
                                                                             if failed else ""))
    return EX_UNAVAILABLE if failed else 0

"""`isic-station demo`: the whole station on simulated devices, watched live over MQTT.

What it starts, all in a temporary folder (or `--keep DIR`):
- a broker: the local Mosquitto when 127.0.0.1:1883 answers, else a `mosquitto` of its own on a free port;
- the emulated OBP spectrometer (`isic-station emulate spectrometer`, its own process on a
  pseudo-terminal) looking at a stage file, and the virtual microscope looking at the same file;
- the station itself, `isic-station run --config <generated config>`, exactly as systemd runs it.
It first calibrates (dark tile, then white tile on the stage, `isic-station calibrate`), then puts
a production line on the stage and prints one line per result received by a separate MQTT
subscriber. `DemoBench` is the same set-up as an object, used by the end-to-end tests.

`--stats` prints time-to-result (trigger to PUBACK, minus the acquisition itself, measured by the
station at the PUBACK and read with the `status` command) and the station process's RSS and CPU.
"""

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from isic_common.errors import DeviceError, StationError
from isic_drivers.lab.sample import instrument_state
from isic_drivers.lab.stage import ProductionLine, SampleStage
from isic_model import SHIPPED_MANIFEST
from isic_station.config import _toml_value
from isic_station.manifest import load_manifest
from isic_station.messaging.mqtt_link import StationTopics
from isic_station.schemas import delivery

LOCAL_BROKER = ("127.0.0.1", 1883)
STARTUP_TIMEOUT_S = 60.0
# The bench's measurement settings (a DemoBench's `settings` override them key by key).
DEMO_SPECTROMETER: Dict[str, Any] = {"baud": 115200, "timeout_s": 2.0, "integration_us": 8000, "coadd": 4}
DEMO_CAMERA: Dict[str, Any] = {"frames_per_measurement": 3}


def port_answers(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def station_command() -> List[str]:
    """How to start `isic-station` with the interpreter running this one (works from a venv or not)."""
    return [sys.executable, "-m", "isic_station.cli"]


def mosquitto_binary() -> Optional[str]:
    """The `mosquitto` executable (PATH, else Debian's /usr/sbin), None when it is not installed."""
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class MosquittoProcess:
    """A Mosquitto of our own on a free port of 127.0.0.1, which `start()` again after `stop()` reuses.

    `config_lines` follow the `listener` line of its `mosquitto.conf` in `workdir` (default: anonymous,
    nothing persisted); `config` can be rewritten between a stop and a start. Its output goes to
    `workdir/mosquitto.log`. The demo's broker when none answers, and the tests' private brokers.
    """

    def __init__(self, workdir: Path, config_lines: str = "allow_anonymous true\npersistence false\n") -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} {self.host}\n{config_lines}", encoding="utf-8")
        self.log = workdir / "mosquitto.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def address(self) -> Tuple[str, int]:
        return self.host, self.port

    def start(self, timeout_s: float = 10.0) -> "MosquittoProcess":
        """Start the broker (again, on the same port) and wait until it accepts connections; DeviceError if not."""
        if self.process is not None and self.process.poll() is None:
            return self
        binary = mosquitto_binary()
        if binary is None:
            raise DeviceError("no `mosquitto` to start a broker with: install it "
                              "(`make system-deps` or `apt-get install mosquitto`)")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([binary, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while not port_answers(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise DeviceError(f"mosquitto did not start on port {self.port}; see {self.log}")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after `timeout_s`) and wait for the process to end."""
        stop_process(self.process, timeout_s)


class Broker:
    """The local Mosquitto if one answers on 127.0.0.1:1883 (or the broker at `address`, whether it
    answers or not), else one started here on a free port (a `MosquittoProcess`)."""

    def __init__(self, workdir: Path, address: Optional[Tuple[str, int]] = None) -> None:
        self.workdir = workdir
        self.own: Optional[MosquittoProcess] = None
        self.fixed = address is not None
        self.host, self.port = address or LOCAL_BROKER

    def start(self) -> "Broker":
        """Use or start a broker; DeviceError when neither works."""
        if self.fixed or port_answers(*LOCAL_BROKER):
            return self
        if mosquitto_binary() is None:
            raise DeviceError("no MQTT broker on 127.0.0.1:1883 and no `mosquitto` to start one: "
                              "install it (`make system-deps` or `apt-get install mosquitto`)")
        self.own = MosquittoProcess(self.workdir).start()
        self.host, self.port = self.own.address
        return self

    @property
    def process(self) -> Optional[subprocess.Popen]:
        """The broker process started here, None when the broker is someone else's (or stopped)."""
        return self.own.process if self.own is not None else None

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def stop(self) -> None:
        """Stop the broker if this object started it."""
        if self.own is not None:
            self.own.stop()
        self.own = None


def stop_process(process: Optional[subprocess.Popen], timeout_s: float = 10.0) -> Optional[int]:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL; the exit code (None when there was no process)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
    return process.returncode


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    """SIGTERM as SystemExit, so that a `with DemoBench(...)` stops what it started. Python's default
    action ends the process at once: a killed `bench accuracy` left its broker, emulated spectrometer and
    station running."""
    raise SystemExit(128 + signum)


class DemoBench:
    """Broker, stage, emulated spectrometer, config and the station process, in `workdir`.

    Use as a context manager; `start_station()` after `calibrate()`. Everything it started is stopped
    on exit, the station first (SIGTERM, so it flushes its outbox), also when the command running the
    bench is killed (SIGTERM; a second one while it stops ends it at once).
    """

    def __init__(self, workdir: Path, station_id: str = "demo-01", mode: str = "continuous",
                 interval_s: float = 1.0, model: Optional[Path] = None, extra_config: str = "",
                 log_level: str = "INFO", camera: bool = True, broker: Optional[Tuple[str, int]] = None,
                 settings: Optional[Mapping[str, Mapping[str, Any]]] = None, pace: bool = True,
                 emulator_args: Sequence[str] = (), preset: str = "default") -> None:
        """`emulator_args` go to `isic-station emulate spectrometer` too (e.g. `--set wavelength_shift_nm=3`).
        `preset`: the lab's conditions of the lines this bench runs; its instrument is in that preset's state
        (`instrument_state`) for the references and the samples alike."""
        self.workdir = Path(workdir)
        self.emulator_args = list(emulator_args)
        self.preset = preset
        self.station_id = station_id
        self.mode = mode
        self.interval_s = interval_s
        self.model = model
        self.extra_config = extra_config
        self.log_level = log_level
        self.stage_path = self.workdir / "stage.json"
        self.config_path = self.workdir / "station.toml"
        self.camera_source = f"virtual:?stage={self.stage_path}&label=1&seed=3" if camera else ""
        self.station_log = self.workdir / "station.log"
        self.broker = Broker(self.workdir, broker)
        # Measurement settings over the bench's own ([spectrometer] and [camera] keys); the emulated
        # instrument runs at spectrometer.baud with its line clock on unless `pace` is False.
        self.spectrometer = dict(DEMO_SPECTROMETER, **(settings or {}).get("spectrometer", {}))
        self.camera = dict(DEMO_CAMERA, **(settings or {}).get("camera", {}))
        self.pace = pace
        self.emulator: Optional[subprocess.Popen] = None
        self.station: Optional[subprocess.Popen] = None
        self.pty_path = ""
        self.prefix = "isic"
        self._sigterm: Any = None   # the SIGTERM handler before this bench's, while it runs

    @property
    def topics(self) -> StationTopics:
        """The bench station's topics (the link's own names, not spelled again here)."""
        return StationTopics(self.prefix, self.station_id)

    @property
    def topic_base(self) -> str:
        return self.topics.base

    def __enter__(self) -> "DemoBench":
        if threading.current_thread() is threading.main_thread():   # only there may a handler be set
            self._sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.broker.start()
            self._start_emulator()
            self.write_config()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def stage(self) -> Any:
        """The stage file both emulated devices look at."""
        return SampleStage(self.stage_path)

    def _start_emulator(self) -> None:
        self.stage.put_reference("dark")
        with open(self.workdir / "spectrometer.log", "ab") as log:
            self.emulator = subprocess.Popen(
                station_command() + ["emulate", "spectrometer", "--stage", str(self.stage_path)]
                + self.emulator_options(), stdout=subprocess.PIPE, stderr=log, text=True)
        first = _readline(self.emulator, STARTUP_TIMEOUT_S)
        if not first:
            raise DeviceError(f"the emulated spectrometer printed no pty path; see {self.workdir / 'spectrometer.log'}")
        self.pty_path = first.strip()

    @property
    def instrument(self) -> Dict[str, float]:
        """The state the emulated instrument is pinned to for every scan: the preset's (`instrument_state`)."""
        return instrument_state(self.preset)

    def emulator_options(self) -> List[str]:
        """The emulator's line options: the config's baud rate, paced unless `pace` is False, the preset's
        instrument state, then `emulator_args` (a later `--set` of the same key wins)."""
        state = [arg for key, value in self.instrument.items() for arg in ("--set", f"{key}={value:g}")]
        return (["--baud", str(self.spectrometer["baud"])] + ([] if self.pace else ["--no-pace"])
                + state + self.emulator_args)

    def write_config(self) -> Path:
        """The station's TOML config for this bench (the model, when given, replaces the shipped one)."""
        model = f'manifest = "{self.model}"\n' if self.model else ""
        self.config_path.write_text(
            f"""# written by isic-station demo
[station]
id = "{self.station_id}"
prefix = "{self.prefix}"
log_level = "{self.log_level}"
state_dir = "state"

[mode]
kind = "{self.mode}"
interval_s = {self.interval_s}

[spectrometer]
port = "{self.pty_path}"
{_toml_lines(self.spectrometer)}

[camera]
source = "{self.camera_source}"
{_toml_lines(self.camera)}

[model]
{model}backend = "onnxruntime"
threads = 1

[mqtt]
host = "{self.broker.host}"
port = {self.broker.port}

[health]
interval_s = 5
{self.extra_config}""", encoding="utf-8")
        return self.config_path

    def calibrate(self) -> None:
        """Dark tile, `calibrate dark`; white tile, `calibrate white` (the station's own CLI)."""
        for kind in ("dark", "white"):
            self.stage.put_reference(kind)
            proc = subprocess.run(station_command() + ["calibrate", kind, "--config", str(self.config_path)],
                                  capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
            if proc.returncode != 0:
                raise DeviceError(f"calibrate {kind} failed ({proc.returncode}): {proc.stderr.strip()}")

    def put_line(self, seed: int, dwell_s: float) -> None:
        """A production line of samples (in the bench's `preset` conditions) under the probe."""
        self.stage.put_line(seed, dwell_s, self.preset)

    def start_station(self) -> subprocess.Popen:
        """`isic-station run --config ...` with its log in station.log."""
        with open(self.station_log, "ab") as log:
            self.station = subprocess.Popen(station_command() + ["run", "--config", str(self.config_path)],
                                            stdout=log, stderr=log)
        return self.station

    def stop_station(self, timeout_s: float = 20.0) -> Optional[int]:
        """SIGTERM the station and wait for its clean stop; its exit code."""
        code = stop_process(self.station, timeout_s)
        self.station = None
        return code

    def close(self) -> None:
        """Stop everything started here, the station first."""
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        self.stop_station()
        stop_process(self.emulator)
        self.emulator = None
        self.broker.stop()


def _toml_lines(table: Mapping[str, Any]) -> str:
    """`key = value` lines of a flat TOML table (numbers, booleans and plain strings)."""
    return "\n".join(f"{key} = {_toml_value(value)}" for key, value in table.items())


def _readline(process: subprocess.Popen, timeout_s: float) -> str:
    """The first line a child prints, without blocking forever if it prints none."""
    lines = queue.Queue()  # one line, from a reader thread
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        return ""


class ResultWatcher:
    """A separate MQTT client subscribed to the station's topics; hands every message to a queue."""

    def __init__(self, host: str, port: int, topics: List[str], client_id: str = "") -> None:
        self.messages = queue.Queue()  # (topic, payload, unix time received)
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"isic-watch-{os.getpid()}-{id(self)}")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), time.time()))
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10.0):
            self.close()
            raise DeviceError(f"could not subscribe at the broker {host}:{port}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def request(self, base: str, name: str, payload: Dict[str, Any], timeout_s: float = 30.0) -> Dict[str, Any]:
        """Send command `name` and return its response (the watcher must subscribe to `<base>/cmd/+/response`)."""
        topics = StationTopics(*base.rsplit("/", 1))  # a station id holds no '/'
        transaction = f"t{time.monotonic_ns()}"
        self.client.publish(topics.command(name), json.dumps(dict(payload, transaction=transaction)),
                            qos=delivery("command_request")["qos"])
        deadline = time.monotonic() + timeout_s
        held = []
        try:
            while time.monotonic() < deadline:
                try:
                    topic, raw, at = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if topic == topics.response(name):
                    doc = json.loads(raw)
                    if doc.get("transaction") == transaction:
                        return doc
                held.append((topic, raw, at))
        finally:
            for item in held:
                self.messages.put(item)
        raise DeviceError(f"no response to {name} within {timeout_s:g} s")

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


def seconds_between(measured_at: str, received_at: float) -> float:
    """Seconds from an ISO 8601 UTC `measured_at` to unix time `received_at`."""
    moment = datetime.strptime(measured_at.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    return received_at - moment.timestamp()


def composition_text(composition: Dict[str, float]) -> str:
    """`polyester 85.0% nylon 15.0%`: fibres from most to least, those below 0.5 % left out."""
    return " ".join(f"{k} {v * 100:4.1f}%" for k, v in sorted(composition.items(), key=lambda kv: -kv[1])
                    if v >= 0.005)


def result_line(doc: Dict[str, Any], received_at: float, truth: Optional[Dict[str, float]] = None) -> str:
    """One console line for a result: seq, sample, composition, blend, confidence, flags, time-to-result,
    and, when known (the simulated line's sample), the true composition.

    Time-to-result here is what the viewer sees: from the measurement's start to its arrival, minus
    the acquisition time.
    """
    ttr_ms = seconds_between(doc["measured_at"], received_at) * 1000.0 - doc["timings_ms"]["acquire"]
    composition = composition_text(doc["composition"])
    flags = ",".join(doc["flags"]) or "-"
    spec = ""
    if doc.get("spec"):
        spec = " IN SPEC" if doc["spec"]["in_spec"] else " OUT OF SPEC"
    return (f"#{doc['sequence']:<5} {str(doc['sample_id']):<28} {composition:<44} {doc['blend']:<22} "
            f"conf {doc['confidence']:.2f}  flags {flags:<20} ttr {ttr_ms:6.0f} ms{spec}"
            + (f"  (true: {composition_text(truth)})" if truth else ""))


def line_truth(stage_path: Path, sample_id: Optional[str]) -> Optional[Dict[str, float]]:
    """The true composition of a sample of the production line on the stage file, from its id (L<seed>-<index>)."""
    try:
        line = json.loads(stage_path.read_text(encoding="utf-8"))
        if line.get("kind") != "line" or not sample_id or not sample_id.startswith(f"L{line['seed']}-"):
            return None
        index = int(sample_id.rsplit("-", 1)[1])
        return dict(ProductionLine(int(line["seed"]), float(line["dwell_s"]), str(line.get("preset", "default")),
                                   dict(line.get("overrides", {}))).sample(index).composition)
    except (OSError, ValueError, KeyError):
        return None


def process_figures(pid: int) -> Dict[str, float]:
    """RSS (MiB) and total CPU time (s) of a process, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        rss_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": rss_kib / 1024.0, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def run_demo(args: argparse.Namespace) -> int:
    """The `demo` command: set up the bench, calibrate, run, print results until duration/count/Ctrl-C."""
    load_manifest(args.model or SHIPPED_MANIFEST)  # a missing model: one clear line now, not a failed station later
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="isic-demo-"))
    print(f"demo: working in {workdir}", flush=True)
    finished = False
    try:
        with DemoBench(workdir, mode="continuous", interval_s=args.interval, model=args.model) as bench:
            where = "started here on port" if bench.broker.started_here else "local Mosquitto on port"
            print(f"demo: broker {bench.broker.host}:{bench.broker.port} ({where} {bench.broker.port}); "
                  f"spectrometer emulated on {bench.pty_path}; virtual microscope", flush=True)
            print("demo: calibrating (dark tile, then white tile under the probe) ...", flush=True)
            bench.calibrate()
            bench.put_line(args.seed, args.dwell)
            watcher = ResultWatcher(bench.broker.host, bench.broker.port,
                                    [bench.topics.result, bench.topics.alarm, bench.topics.response_filter])
            try:
                station = bench.start_station()
                print(f"demo: station running (pid {station.pid}, log {bench.station_log}); results as they "
                      f"arrive over MQTT on {bench.topics.result} (Ctrl-C to stop):", flush=True)
                received = _watch(bench, watcher, args)
                stats = _stats(bench, watcher) if args.stats and bench.station is not None else None
            finally:
                code = bench.stop_station()
                watcher.close()
            print(f"demo: {received} result(s) received; station stopped with exit code {code}", flush=True)
            if stats:
                print(stats, flush=True)
            if received == 0:
                raise DeviceError(f"no result arrived; see the station's log {bench.station_log}")
        finished = True
    finally:
        if args.keep is None and finished:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep is None:  # the error names logs in there: keep them to be read
            print(f"demo: kept {workdir} (config, logs) to look into; delete it when done", file=sys.stderr,
                  flush=True)
    return 0


def _watch(bench: DemoBench, watcher: ResultWatcher, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.duration if args.duration else None
    received = 0
    startup_deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while args.count is None or received < args.count:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if bench.station is not None and bench.station.poll() is not None:
                raise StationError(f"the station exited with code {bench.station.returncode}; see {bench.station_log}")
            if received == 0 and time.monotonic() > startup_deadline:
                raise DeviceError(f"no result within {STARTUP_TIMEOUT_S:.0f} s; see {bench.station_log}")
            try:
                topic, raw, at = watcher.messages.get(timeout=0.5)
            except queue.Empty:
                continue
            doc = json.loads(raw)
            if topic == bench.topics.result:
                received += 1
                print(result_line(doc, at, line_truth(bench.stage_path, doc["sample_id"])), flush=True)
            elif topic == bench.topics.alarm:
                print(f"ALARM  {doc['kind']}: {doc['message']}", flush=True)
    except KeyboardInterrupt:
        print("demo: stopping", flush=True)
    return received


def _stats(bench: DemoBench, watcher: ResultWatcher) -> str:
    assert bench.station is not None
    first = process_figures(bench.station.pid)
    started = time.monotonic()
    time.sleep(10.0)
    second = process_figures(bench.station.pid)
    cpu = (second["cpu_s"] - first["cpu_s"]) / (time.monotonic() - started) * 100.0
    status = watcher.request(bench.topic_base, "status", {})
    data = status.get("data") or {}
    ttr = data.get("time_to_result_ms", {})
    rate = data.get("pipeline", {}).get("results_per_minute")

    def ms(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.1f} ms"

    return (f"stats: time-to-result (trigger to PUBACK minus acquisition, measured by the station) over "
            f"{ttr.get('n', 0)} results: p50 {ms(ttr.get('p50'))}, p99 {ms(ttr.get('p99'))}\n"
            f"stats: station process at {rate} results/min: RSS {second['rss_mib']:.0f} MiB, "
            f"CPU {cpu:.1f} % of one core (over 10 s)")

"""The fault bench: the real daemon (`isic-station run`) on the demo bench, with faults on every part.

`FaultBench` is `isic-station demo`'s `DemoBench` (stage file, emulated OBP spectrometer in its own
process on a pseudo-terminal, virtual microscope, config, `isic-station calibrate`, the station
process) with two additions a fault test needs: the spectrometer sits behind a stable `--link` path
(as udev gives a USB serial adapter), so it can be unplugged and plugged back in under the same
name, and the emulator can be started with `--fault NAME=RATE` options. Only the model is the tiny
stand-in (tests/fakes/tiny_isicnet.py), so the suite does not depend on training.
"""

import json
import sqlite3
import subprocess
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest

from fakes.tiny_isicnet import write_tiny_model
from isic_station.tools.demo import DemoBench, station_command, stop_process
from messaging.conftest import reconfigure
from messaging.mqtt_helpers import Recorder, unique

STARTUP_S = 60.0


class FaultBench(DemoBench):
    """A DemoBench whose spectrometer can be unplugged and re-plugged behind `link`, with emulator faults."""

    def __init__(self, workdir: Path, faults: Sequence[str] = (), camera_options: str = "", **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.faults = list(faults)
        self.link = self.workdir / "spectrometer"
        if camera_options and self.camera_source:
            self.camera_source += "&" + camera_options

    def _start_emulator(self) -> None:
        self.stage.put_reference("dark")
        self.plug_spectrometer()

    def plug_spectrometer(self, faults: Optional[Sequence[str]] = None) -> float:
        """Start the emulated spectrometer on a new pty behind `link`; the monotonic time the port appeared."""
        if faults is not None:
            self.faults = list(faults)
        if self.link.is_symlink():
            self.link.unlink()
        options = [arg for fault in self.faults for arg in ("--fault", fault)]
        with open(self.workdir / "spectrometer.log", "ab") as log:
            self.emulator = subprocess.Popen(
                station_command() + ["emulate", "spectrometer", "--stage", str(self.stage_path),
                                     "--link", str(self.link)] + options,
                stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + STARTUP_S
        while not self.link.exists():
            assert self.emulator.poll() is None, f"emulator exited: {self.log_tail('spectrometer.log')}"
            assert time.monotonic() < deadline, "the emulated spectrometer opened no pty"
            time.sleep(0.02)
        self.pty_path = str(self.link)
        return time.monotonic()

    def unplug_spectrometer(self) -> None:
        """Stop the emulator: its pty closes and the link disappears (the cable is pulled)."""
        assert stop_process(self.emulator) == 0
        self.emulator = None
        assert not self.link.exists()

    @property
    def outbox_path(self) -> Path:
        return self.workdir / "state" / "outbox.sqlite3"

    def log_tail(self, name: str = "station.log", chars: int = 3000) -> str:
        path = self.workdir / name
        return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""

    def wait_alive(self, seconds: float) -> None:
        """Sleep `seconds`, failing at once if the station process ends meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.station is not None and self.station.poll() is None, (
                f"the station exited ({self.station.returncode if self.station else None}):\n{self.log_tail()}")
            time.sleep(0.1)


class OutboxFile:
    """What the station's outbox database holds, read with plain sqlite3 (works after a SIGKILL too)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str) -> List[Any]:
        if not self.path.exists():
            return []
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)) as db:
            try:
                return db.execute(sql).fetchall()
            except sqlite3.OperationalError as exc:  # the station is still creating its tables
                if "no such table" in str(exc):
                    return []
                raise

    def stored_sequences(self) -> List[int]:
        """Sequence numbers of the results waiting in the outbox, oldest first."""
        rows = self._query("SELECT payload FROM outbox WHERE topic LIKE '%/result' ORDER BY id")
        return [json.loads(bytes(r[0]))["sequence"] for r in rows]

    def counter(self, name: str) -> int:
        """A persistent counter: `sequence` (last sequence number taken) or `dropped`."""
        rows = self._query(f"SELECT value FROM counters WHERE name = '{name}'")
        return int(rows[0][0]) if rows else 0


def wait_until(condition: Any, timeout_s: float, what: str, bench: Optional[FaultBench] = None) -> None:
    """Poll `condition()` every 0.1 s; fail naming `what` (and the station log) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{bench.log_tail() if bench else ''}")
        if bench is not None and bench.station is not None and bench.station.poll() is not None:
            pytest.fail(f"the station exited ({bench.station.returncode}) while waiting for {what}\n"
                        f"{bench.log_tail()}")
        time.sleep(0.1)


def results(recorder: Recorder, bench: DemoBench) -> List[Dict[str, Any]]:
    """The result documents the subscriber received, in arrival order."""
    return recorder.payloads(f"{bench.topic_base}/result")


def sequences(docs: List[Dict[str, Any]]) -> List[int]:
    return [d["sequence"] for d in docs]


def assert_in_order_duplicates_only_as_replays(docs: List[Dict[str, Any]]) -> None:
    """First deliveries come in sequence order; every later copy of a sequence is flagged `replayed`."""
    seen = set()
    first = []
    for doc in docs:
        if doc["sequence"] in seen:
            assert doc["replayed"] is True, f"sequence {doc['sequence']} arrived again without `replayed`"
        else:
            seen.add(doc["sequence"])
            first.append(doc["sequence"])
    assert first == sorted(first), f"first deliveries out of order: {first}"


def health_docs(recorder: Recorder, bench: DemoBench) -> List[Dict[str, Any]]:
    return [d for d in recorder.payloads(f"{bench.topic_base}/health") if d]


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "model", om=False)


@pytest.fixture
def persistent_broker(private_broker, tmp_path: Path):
    """The private Mosquitto with persistence on: a subscriber's session and its queued QoS 1 messages
    survive a broker restart, so the test's subscriber misses nothing the station sends meanwhile."""
    store = tmp_path / "mosquitto-store"
    store.mkdir()
    reconfigure(private_broker, f"allow_anonymous true\npersistence true\npersistence_location {store}/\n")
    return private_broker


def station_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_bench(tmp_path: Path, tiny_model: Path) -> Iterator[Any]:
    """`make_bench(broker, **options)`: a calibrated FaultBench with a production line under the probe."""
    made: List[FaultBench] = []

    def make(broker: Any, kind: str = "fault", **options: Any) -> FaultBench:
        options.setdefault("mode", "continuous")
        options.setdefault("interval_s", 0.3)
        options.setdefault("camera", False)
        bench = FaultBench(tmp_path / f"bench{len(made)}", station_id=station_id(kind), model=tiny_model,
                           broker=broker.address, **options)
        bench.__enter__()
        made.append(bench)
        bench.calibrate()
        bench.put_line(seed=4, dwell_s=2.0)
        return bench

    yield make
    for bench in made:
        bench.close()


def recorder_for(broker: Any, bench: DemoBench, topics: Sequence[str] = ("result",),
                 persistent: bool = True) -> Recorder:
    """A subscriber to the station's topics; `persistent` keeps its session across broker restarts."""
    rec = Recorder(broker.host, broker.port, [f"{bench.topic_base}/{t}" for t in topics],
                   client_id=unique("fault-rec-"), persistent=persistent)
    rec.wait_subscribed(10.0)
    return rec


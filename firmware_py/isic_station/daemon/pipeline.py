"""The station's pipeline: two worker threads joined by bounded queues, and its back-pressure policy.

    requests (bounded) --> [acquisition thread] --> measurements (bounded) --> [inference thread]
    measure/calibrate       owns the devices          co-added spectrum,          preprocess, model,
    commands, timer ticks   (spectrometer, camera)    frames, sample context      result -> outbox

The inference thread hands each result to the durable outbox (SQLite, a local write) and the
MQTT link's own thread publishes from there, so a slow or absent broker never reaches back into
acquisition or inference: the outbox, bounded by its disk quota, is the buffer towards the broker.

Back-pressure policy (nothing is dropped silently; every case is counted and in the health document):
- A measurement that has been taken is never discarded. It cost probe time, and a triggered one has
  a person waiting for its result; dropping the oldest pending measurement would lose exactly the
  results the station promises not to lose.
- So when inference falls behind and the measurement queue is full, acquisition waits for space
  (a blocking put with a timeout, re-checked against shutdown) instead of measuring. In continuous
  mode the timer ticks that pass meanwhile are skipped and counted (`skipped_ticks`): the line is
  sampled less often, which is visible in `results.per_minute`, rather than measured and thrown away.
- Commands (`measure`, `calibrate`) wait in a bounded request queue; when that is full, `submit`
  raises `PipelineBusy` at once and the command is answered with an error (`rejected_requests`),
  instead of blocking the MQTT thread that delivered it.

Nothing busy-waits: the threads sleep in blocking queue gets/puts with timeouts and Event waits.

Progress (the systemd watchdog hook `on_progress`): a completed result or calibration is progress.
An idle pipeline is progressing too (a triggered station waits for commands; a continuous one waits
for its next tick), but only while it is healthy: the acquisition thread is waiting for work (not
stuck inside a device call), its last measurement did not fail, and every worker woke up within the
stall window. So a hung stage, a device that stopped answering, or measurements that keep failing
all stop the pings, and systemd restarts the station (which reopens the devices).
"""

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from isic_common.percentile import percentile

log = logging.getLogger(__name__)

# How long a worker sleeps at most before it wakes to check for shutdown and record a heartbeat.
WAKE_S = 0.5


class PipelineBusy(Exception):
    """The request queue is full: the caller answers the command with an error instead of waiting."""


class MeasurementRefused(Exception):
    """`acquire` cannot measure yet for a reason a person must fix (e.g. no calibration). Answered and
    counted (`refused`) like a failure, but the pipeline itself is healthy, so it does not stop progress:
    a restart by the watchdog would not fix it, only loop."""


@dataclass
class MeasureJob:
    """Take one measurement: from a `measure` command (sample id optional) or a continuous-mode tick."""

    origin: str  # "command" or "timer"
    sample_id: Optional[str] = None
    requested_at: float = field(default_factory=time.monotonic)
    done: "Future[Any]" = field(default_factory=Future)


@dataclass
class CalibrateJob:
    """Take a dark or white reference with the spectrometer (runs on the acquisition thread, which owns it)."""

    reference: str
    done: "Future[Any]" = field(default_factory=Future)


class PipelineStats:
    """Counters and recent latencies of the pipeline, safe to read from any thread."""

    WINDOW = 256  # recent results kept for latency percentiles

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Dict[str, int] = {
            "requested": 0, "acquired": 0, "results": 0, "calibrations": 0, "acquisition_errors": 0,
            "inference_errors": 0, "skipped_ticks": 0, "rejected_requests": 0, "refused": 0,
        }
        self._result_times: Deque[float] = deque()
        self.inference_ms: Deque[float] = deque(maxlen=self.WINDOW)
        self.acquire_ms: Deque[float] = deque(maxlen=self.WINDOW)

    def add(self, name: str, n: int = 1) -> None:
        """Increase counter `name` by `n`."""
        with self._lock:
            self.counts[name] += n

    def record_acquired(self, acquire_ms: float) -> None:
        """Count one measurement taken and remember how long it took."""
        with self._lock:
            self.counts["acquired"] += 1
            self.acquire_ms.append(acquire_ms)

    def record_result(self, inference_ms: Optional[float]) -> None:
        """Count one result and remember its inference latency."""
        now = time.monotonic()
        with self._lock:
            self.counts["results"] += 1
            self._result_times.append(now)
            while self._result_times and now - self._result_times[0] > 60.0:
                self._result_times.popleft()
            if inference_ms is not None:
                self.inference_ms.append(inference_ms)

    def snapshot(self) -> Dict[str, Any]:
        """Counters, the result rate over the last minute and latency percentiles."""
        now = time.monotonic()
        with self._lock:
            recent = sum(1 for t in self._result_times if now - t <= 60.0)
            latencies = list(self.inference_ms)
            acquire = list(self.acquire_ms)
            counts = dict(self.counts)
        return {
            "counts": counts,
            "results_per_minute": float(recent),
            "inference_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
            "acquire_ms": {"p50": percentile(acquire, 50), "p99": percentile(acquire, 99)},
        }


class Pipeline:
    """Runs acquisition and inference on their own threads with the policy in the module docstring.

    `acquire(job)` returns a measurement (any object) and may raise; `calibrate(job)` returns what the
    calibrate command answers; `process(measurement)` turns a measurement into its result (stored in the
    outbox by the caller's function) and returns what the measure command answers. Each job's `done`
    future receives that answer or the exception.
    """

    def __init__(
        self,
        acquire: Callable[[MeasureJob], Any],
        calibrate: Callable[[CalibrateJob], Any],
        process: Callable[[Any], Any],
        continuous_interval_s: Optional[float],
        queue_size: int = 4,
        request_queue_size: int = 8,
        on_progress: Optional[Callable[[str], None]] = None,
        stall_after_s: float = 30.0,
    ) -> None:
        self._acquire = acquire
        self._calibrate = calibrate
        self._process = process
        self.interval_s = continuous_interval_s
        self._requests = queue.Queue(maxsize=request_queue_size)
        self._measurements = queue.Queue(maxsize=queue_size)
        self._on_progress = on_progress
        self._stall_after_s = stall_after_s
        self._beats: Dict[str, float] = {}
        self._beat_lock = threading.Lock()
        self._stop = threading.Event()
        self._acquisition_done = threading.Event()
        self._paused = threading.Event()
        self._acquisition_idle = False  # waiting for a job (not inside a device call)
        self._last_measurement_failed = False
        self._refusing = False
        self._threads: List[threading.Thread] = []
        self.stats = PipelineStats()

    # --- control -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start both worker threads."""
        self._stop.clear()
        self._acquisition_done.clear()
        for name, target in (("acquisition", self._acquisition_loop), ("inference", self._inference_loop)):
            self._beat(name)
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("pipeline started (%s)", f"continuous every {self.interval_s:g} s" if self.interval_s else
                 "triggered by the measure command")

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop taking measurements, finish those already taken, and join the threads.

        Returns False when a thread did not end within `timeout_s` (it is a daemon thread and
        does not keep the process alive). Requests still waiting are answered with an error.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        self._fail_waiting_requests()
        if alive:
            log.error("pipeline threads %s did not stop within %.1f s", alive, timeout_s)
        return not alive

    def pause_timer(self, paused: bool) -> None:
        """Suspend (True) or resume continuous-mode ticks, e.g. while the demo calibrates."""
        if paused:
            self._paused.set()
        else:
            self._paused.clear()

    def submit(self, job: Any) -> "Future[Any]":
        """Queue a measure or calibrate job; raises PipelineBusy when the request queue is full."""
        if self._stop.is_set():
            raise PipelineBusy("the station is stopping")
        try:
            self._requests.put_nowait(job)
        except queue.Full:
            self.stats.add("rejected_requests")
            raise PipelineBusy(f"{self._requests.qsize()} requests already waiting; try again shortly") from None
        if isinstance(job, MeasureJob):
            self.stats.add("requested")
        return job.done

    @property
    def depth(self) -> Dict[str, int]:
        """How many requests and measurements are waiting."""
        return {"requests": self._requests.qsize(), "measurements": self._measurements.qsize()}

    # --- workers -------------------------------------------------------------------------------
    def _acquisition_loop(self) -> None:
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                self._beat("acquisition")
                self._acquisition_idle = True
                job = self._next_job(next_tick)
                if job is None:
                    self._progress("idle", idle=True)
                    continue
                self._acquisition_idle = False
                if isinstance(job, CalibrateJob):
                    self._run_calibration(job)
                    continue
                if job.origin == "timer":
                    next_tick = self._advance(next_tick)
                self._measure(job)
        finally:
            self._acquisition_done.set()

    def _next_job(self, next_tick: float) -> Optional[Any]:
        """A queued request, or a timer job when a continuous tick is due; None after a quiet wake-up."""
        timed = self.interval_s is not None and not self._paused.is_set()
        wait = min(WAKE_S, max(0.0, next_tick - time.monotonic())) if timed else WAKE_S
        try:
            return self._requests.get(timeout=wait)
        except queue.Empty:
            pass
        if timed and time.monotonic() >= next_tick:
            return MeasureJob(origin="timer")
        return None

    def _advance(self, tick: float) -> float:
        """The next tick after `tick`; ticks already missed (acquisition was waiting) are counted as skipped."""
        assert self.interval_s is not None
        now = time.monotonic()
        tick += self.interval_s
        missed = 0
        while tick <= now:
            tick += self.interval_s
            missed += 1
        if missed:
            self.stats.add("skipped_ticks", missed)
            log.warning("skipped %d continuous-mode measurement(s): the pipeline was still busy", missed)
        return tick

    def _measure(self, job: MeasureJob) -> None:
        started = time.monotonic()
        try:
            measurement = self._acquire(job)
        except MeasurementRefused as exc:
            self.stats.add("refused")
            # once per streak at WARNING: in continuous mode this repeats every tick until someone acts
            log.log(logging.DEBUG if self._refusing else logging.WARNING, "not measuring: %s", exc)
            self._refusing = True
            job.done.set_exception(exc)
            return
        except Exception as exc:  # a device fault must not end the thread; it is answered and counted
            self.stats.add("acquisition_errors")
            self._last_measurement_failed = True
            log.error("measurement failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            job.done.set_exception(exc)
            return
        self._last_measurement_failed = self._refusing = False
        self.stats.record_acquired((time.monotonic() - started) * 1000.0)
        self._progress("acquisition")
        while True:  # wait for space: a taken measurement is never dropped (module docstring)
            try:
                self._measurements.put((job, measurement), timeout=WAKE_S)
                return
            except queue.Full:
                self._beat("acquisition")
                if self._stop.is_set() and not self._inference_alive():
                    job.done.set_exception(PipelineBusy("the station stopped before inference"))
                    return

    def _run_calibration(self, job: CalibrateJob) -> None:
        try:
            job.done.set_result(self._calibrate(job))
            self.stats.add("calibrations")
            self._progress("calibration")
        except Exception as exc:
            log.error("%s calibration failed: %s", job.reference, exc)
            job.done.set_exception(exc)

    def _inference_loop(self) -> None:
        while True:
            self._beat("inference")
            try:
                job, measurement = self._measurements.get(timeout=WAKE_S)
            except queue.Empty:
                # drain what was measured before a stop; end once acquisition has ended too
                if self._stop.is_set() and self._acquisition_done.is_set():
                    return
                self._progress("idle", idle=True)
                continue
            started = time.monotonic()
            try:
                answer = self._process(measurement)
            except Exception as exc:
                self.stats.add("inference_errors")
                log.error("inference failed: %s", exc, exc_info=True)
                job.done.set_exception(exc)
                continue
            self.stats.record_result((time.monotonic() - started) * 1000.0)
            job.done.set_result(answer)
            self._progress("result")

    # --- liveness ------------------------------------------------------------------------------
    def _beat(self, worker: str) -> None:
        with self._beat_lock:
            self._beats[worker] = time.monotonic()

    def _inference_alive(self) -> bool:
        return any(t.name == "inference" and t.is_alive() for t in self._threads)

    def _progress(self, step: str, idle: bool = False) -> None:
        """Report progress to the watchdog hook under the rules of the module docstring."""
        if self._on_progress is None:
            return
        if idle and (not self._acquisition_idle or self._last_measurement_failed):
            return
        now = time.monotonic()
        with self._beat_lock:
            stale = [name for name, t in self._beats.items() if now - t > self._stall_after_s]
        if not stale:
            self._on_progress(step)

    def _fail_waiting_requests(self) -> None:
        while True:
            try:
                job = self._requests.get_nowait()
            except queue.Empty:
                return
            if not job.done.done():
                job.done.set_exception(PipelineBusy("the station stopped before this request ran"))

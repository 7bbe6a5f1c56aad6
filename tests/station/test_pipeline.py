"""The pipeline's threads, queues and back-pressure policy, with plain functions as its stages."""

import threading
import time
from typing import Any, List

import pytest

from isic_station.daemon.pipeline import CalibrateJob, MeasureJob, MeasurementRefused, Pipeline, PipelineBusy


def test_triggered_jobs_get_answers_and_calibration_runs_on_acquisition_thread() -> None:
    threads: List[str] = []

    def acquire(job: MeasureJob) -> Any:
        threads.append(threading.current_thread().name)
        return {"sample": job.sample_id}

    def calibrate(job: CalibrateJob) -> Any:
        threads.append(threading.current_thread().name)
        return {"reference": job.reference}

    pipeline = Pipeline(acquire, calibrate, lambda m: {"done": m["sample"]}, continuous_interval_s=None)
    pipeline.start()
    try:
        assert pipeline.submit(MeasureJob("command", "S-1")).result(timeout=5) == {"done": "S-1"}
        assert pipeline.submit(CalibrateJob("dark")).result(timeout=5) == {"reference": "dark"}
    finally:
        assert pipeline.stop(timeout_s=5)
    assert threads == ["acquisition", "acquisition"]
    counts = pipeline.stats.snapshot()["counts"]
    assert counts["results"] == 1 and counts["calibrations"] == 1 and counts["requested"] == 1


def test_acquisition_error_is_answered_and_counted_and_the_thread_survives() -> None:
    calls = []

    def acquire(job: MeasureJob) -> Any:
        calls.append(job.sample_id)
        if job.sample_id == "bad":
            raise OSError("spectrometer did not answer")
        return job.sample_id

    pipeline = Pipeline(acquire, lambda j: None, lambda m: m, continuous_interval_s=None)
    pipeline.start()
    try:
        with pytest.raises(OSError, match="did not answer"):
            pipeline.submit(MeasureJob("command", "bad")).result(timeout=5)
        assert pipeline.submit(MeasureJob("command", "good")).result(timeout=5) == "good"
    finally:
        pipeline.stop(timeout_s=5)
    assert pipeline.stats.snapshot()["counts"]["acquisition_errors"] == 1


def test_slow_inference_skips_ticks_but_never_drops_a_taken_measurement() -> None:
    """Continuous mode at 20 ms with 150 ms inference: ticks are skipped and counted, every
    measurement taken becomes a result."""
    taken: List[int] = []
    processed: List[int] = []

    def acquire(job: MeasureJob) -> Any:
        taken.append(len(taken))
        return taken[-1]

    def process(m: Any) -> Any:
        time.sleep(0.15)
        processed.append(m)

    pipeline = Pipeline(acquire, lambda j: None, process, continuous_interval_s=0.02, queue_size=1)
    pipeline.start()
    time.sleep(1.0)
    assert pipeline.stop(timeout_s=5)
    counts = pipeline.stats.snapshot()["counts"]
    assert counts["skipped_ticks"] > 10, counts
    assert processed == taken, "a measurement that was taken did not become a result"
    assert counts["acquired"] == counts["results"] == len(taken)


def test_full_request_queue_rejects_at_once() -> None:
    release = threading.Event()

    def acquire(job: MeasureJob) -> Any:
        release.wait(5)
        return None

    pipeline = Pipeline(acquire, lambda j: None, lambda m: m, continuous_interval_s=None, request_queue_size=2)
    pipeline.start()
    try:
        first = pipeline.submit(MeasureJob("command"))
        time.sleep(0.2)  # the acquisition thread holds the first job
        pipeline.submit(MeasureJob("command"))
        pipeline.submit(MeasureJob("command"))
        started = time.monotonic()
        with pytest.raises(PipelineBusy, match="waiting"):
            pipeline.submit(MeasureJob("command"))
        assert time.monotonic() - started < 0.1
        release.set()
        first.result(timeout=5)
    finally:
        release.set()
        pipeline.stop(timeout_s=5)
    assert pipeline.stats.snapshot()["counts"]["rejected_requests"] == 1


def test_progress_stops_when_a_stage_hangs() -> None:
    progress: List[str] = []
    hang = threading.Event()

    def process(m: Any) -> Any:
        hang.wait(10)

    pipeline = Pipeline(lambda j: 1, lambda j: None, process, continuous_interval_s=None,
                        on_progress=progress.append, stall_after_s=1.0)
    pipeline.start()
    try:
        time.sleep(1.2)
        assert "idle" in progress  # an idle pipeline that is alive still reports progress
        pipeline.submit(MeasureJob("command"))
        time.sleep(1.5)  # inference is stuck for longer than the stall window
        progress.clear()
        time.sleep(1.0)
        assert progress == [], progress
    finally:
        hang.set()
        pipeline.stop(timeout_s=5)


def test_failing_measurements_stop_progress_until_one_succeeds() -> None:
    progress: List[str] = []
    failing = threading.Event()
    failing.set()

    def acquire(job: MeasureJob) -> Any:
        if failing.is_set():
            raise OSError("spectrometer did not answer")
        return 1

    pipeline = Pipeline(acquire, lambda j: None, lambda m: m, continuous_interval_s=0.2,
                        on_progress=progress.append, stall_after_s=5.0)
    pipeline.start()
    try:
        time.sleep(0.6)
        progress.clear()
        time.sleep(1.0)
        assert progress == [], "idle progress reported while every measurement fails"
        failing.clear()
        time.sleep(1.0)
        assert "result" in progress
    finally:
        pipeline.stop(timeout_s=5)


def test_a_refused_measurement_is_answered_but_does_not_stop_progress() -> None:
    progress: List[str] = []

    def acquire(job: MeasureJob) -> Any:
        raise MeasurementRefused("no dark and white reference: calibrate first")

    pipeline = Pipeline(acquire, lambda j: None, lambda m: m, continuous_interval_s=None,
                        on_progress=progress.append, stall_after_s=5.0)
    pipeline.start()
    try:
        with pytest.raises(MeasurementRefused, match="calibrate"):
            pipeline.submit(MeasureJob("command")).result(timeout=5)
        progress.clear()
        time.sleep(1.2)
        assert "idle" in progress
    finally:
        pipeline.stop(timeout_s=5)
    counts = pipeline.stats.snapshot()["counts"]
    assert counts["refused"] == 1 and counts["acquisition_errors"] == 0

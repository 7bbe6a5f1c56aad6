"""The quality gate on virtual-lab frames, after OpenCV's real MJPG encoder and decoder."""

import cv2
import numpy as np
import pytest

from isic_drivers.camera import CameraSource
from isic_station.acquisition.quality_gate import GateThresholds, QualityGate, assess

SIZE = "width=320&height=240"


@pytest.fixture
def decoded(tmp_path, labelled_stage, write_video):
    """`decoded(fault)`: 4 normal frames then 4 frames with `fault`, written as MJPG and read back."""

    def run(fault: str):
        source = f"virtual:?stage={labelled_stage.path}&seed=2&{SIZE}&fault={fault}&fault_after=4"
        video = tmp_path / f"{fault}.avi"
        with CameraSource(source) as camera:
            write_video(video, (f.image for f in camera.frames(limit=8)))
        with CameraSource(str(video)) as camera:
            return [f.image for f in camera.frames()]

    return run


def test_sharp_and_blurred_frames_are_told_apart_after_decoding(decoded):
    frames = decoded("blur")
    assert len(frames) == 8
    qualities = [assess(f) for f in frames]
    assert [q.passed for q in qualities] == [True] * 4 + [False] * 4
    assert all(q.reasons == ("blurred",) for q in qualities[4:])
    assert min(q.focus for q in qualities[:4]) > 10 * max(q.focus for q in qualities[4:])


def test_over_exposed_frames_fail_on_clipping(decoded):
    qualities = [assess(f) for f in decoded("overexposed")]
    assert all(q.passed for q in qualities[:4])
    assert all("overexposed" in q.reasons for q in qualities[4:])
    assert min(q.clipped_high for q in qualities[4:]) > 0.5 > max(q.clipped_high for q in qualities[:4])


def test_an_empty_field_fails_on_coverage(decoded):
    qualities = [assess(f) for f in decoded("empty")]
    assert all(q.passed for q in qualities[:4])
    assert all(q.reasons == ("empty",) for q in qualities[4:])
    assert max(q.coverage for q in qualities[4:]) < 0.01 < min(q.coverage for q in qualities[:4])


def test_an_under_exposed_frame_fails_on_clipping_low(decoded):
    frame = decoded("blur")[0]
    dark = cv2.subtract(frame, np.full_like(frame, 220))       # exposure far too short: saturating
    quality = assess(dark)
    assert "underexposed" in quality.reasons and quality.clipped_low > GateThresholds().max_clipped_low
    assert assess(decoded("blur")[0]).clipped_low < 0.01


def test_failing_frames_are_counted_by_reason(decoded):
    gate = QualityGate()
    for frame in decoded("blur") + decoded("empty")[4:]:
        gate.assess(frame)
    counts = gate.counts()
    assert counts["assessed"] == 12
    assert counts["passed"] == 4
    assert counts["blurred"] == 4 and counts["empty"] == 4
    assert counts["overexposed"] == 0 and counts["underexposed"] == 0


def test_focus_does_not_depend_on_the_camera_resolution(labelled_stage):
    with CameraSource(f"virtual:?stage={labelled_stage.path}&width=1280&height=960", um_per_px=0.5) as camera:
        fine = camera.read().image
    coarse = cv2.resize(fine, (640, 480), interpolation=cv2.INTER_AREA)
    assert assess(fine).focus == pytest.approx(assess(coarse).focus, rel=0.05)


def test_thresholds_decide_with_the_same_figures():
    frame = np.full((240, 320, 3), 200, np.uint8)
    frame[:, 100:106] = 120                       # one sharp fibre: about 2 % of the field
    assert assess(frame, GateThresholds(min_coverage=0.01)).passed
    assert assess(frame, GateThresholds(min_coverage=0.03)).reasons == ("empty",)
    strict = assess(frame, GateThresholds(min_focus=1e9))
    assert strict.reasons == ("blurred",) and strict.focus == assess(frame).focus

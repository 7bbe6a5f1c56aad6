"""Helpers for the camera suite: virtual-lab samples on a stage file, MJPG videos through cv2.VideoWriter."""

from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import pytest

from isic_drivers.lab import SampleStage, draw_sample


def _write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 10.0) -> int:
    """Write BGR frames to an MJPG .avi with OpenCV's real encoder (works headless); the frame count."""
    writer = None
    count = 0
    for frame in frames:
        if writer is None:
            size = (frame.shape[1], frame.shape[0])
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
            assert writer.isOpened(), "OpenCV cannot write MJPG here"
        writer.write(frame)
        count += 1
    assert writer is not None, "no frames to write"
    writer.release()
    return count


@pytest.fixture
def write_video() -> Callable[..., int]:
    """`write_video(path, frames, fps=10.0) -> count`: an MJPG .avi through cv2.VideoWriter."""
    return _write_video


@pytest.fixture
def labelled_stage(tmp_path: Path) -> SampleStage:
    """A stage file holding one virtual-lab sample with a sample id (what a technician put there)."""
    stage = SampleStage(tmp_path / "stage.json")
    sample = draw_sample(np.random.default_rng(11), sample_id="ISIC-LOT7-0042")
    stage.put_sample(sample)
    return stage

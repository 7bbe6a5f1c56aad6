"""Spectrum and frames are acquired at the same time: a slow camera does not delay the spectrum, a slow
spectrometer does not hold up (or drop) frames, and the measurement takes about the slower of the two.

Real parts: the emulated OBP instrument served on a pseudo-terminal with its line clock on (paced at
115200 baud or 9600 for a slow one, integrating for integration time x scans to average), the driver on pyserial, the
virtual microscope through CameraSource, the quality gate, the label reader and the calibration store.
The checks compare the two devices' shares with each other, with wide margins, not with wall-clock targets.
"""

import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pytest

from isic_drivers.camera import CameraSource
from isic_drivers.emulators.pseudo_terminal import PseudoTerminal
from isic_drivers.emulators.spectrometer import EmulatedSpectrometer, Server, instrument_for
from isic_drivers.lab.sample import Sample
from isic_drivers.lab.stage import SampleStage
from isic_drivers.obp.spectrometer import ObpSpectrometer
from isic_drivers.obp.transport import SerialTransport
from isic_station.acquisition.acquirer import Acquirer
from isic_station.acquisition.calibration import CalibrationStore
from isic_station.acquisition.quality_gate import QualityGate
from isic_station.acquisition.sample_label import SampleLabelReader
from isic_station.daemon.pipeline import MeasureJob
from isic_station.preprocess.image import build_image_batch, build_image_input
from isic_station.preprocess.image_stream import ImageBatchBuilder

SAMPLE = Sample({"cotton": 0.6, "polyester": 0.4}, sample_id="LOT7-0042")
# A manifest's `image` object (the shipped model's kind: 64 px tiles at 2.4 um/px, 16 per measurement).
IMAGE = {"tile_px": 64, "um_per_px": 2.4, "channels": 3, "tiles_per_measurement": 16, "mean": 0.75, "std": 0.22}


@pytest.fixture
def stage(tmp_path: Path) -> SampleStage:
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_reference("dark")
    return stage


@pytest.fixture
def spectrometer(stage: SampleStage) -> Iterator[ObpSpectrometer]:
    """The driver on a paced emulated instrument (its server in a thread)."""
    line = PseudoTerminal()
    server = Server(EmulatedSpectrometer(stage, instrument_for(None, None, "CONC-1")), line, pace=True)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    driver = ObpSpectrometer(SerialTransport(line.path, read_timeout_s=3.0))
    yield driver
    driver.transport.close()
    server.stop()
    thread.join(timeout=5)
    line.remove()


def acquirer(spectrometer: ObpSpectrometer, stage: SampleStage, tmp_path: Path, fps: float, frames: int,
             integration_us: int, coadd: int, size: Tuple[int, int] = (640, 480)) -> Acquirer:
    """An Acquirer as the station builds one, calibrated on the stage's tiles, the sample then put on."""
    camera = CameraSource(f"virtual:?stage={stage.path}&label=1&seed=2", size[0], size[1], fps, read_timeout_s=5.0)
    camera.open()
    made = Acquirer(spectrometer, camera, QualityGate(), SampleLabelReader(),
                    CalibrationStore(tmp_path / "calibration"), integration_us=integration_us,
                    context=lambda: ("conc-01", None), coadd=coadd, frames_per_measurement=frames,
                    min_signal_fraction=0.05, frame_timeout_s=3.0,
                    image_batch=lambda: ImageBatchBuilder(camera.um_per_px, IMAGE))
    made.take_reference("dark")
    stage.put_reference("white")
    made.take_reference("white")
    stage.put_sample(SAMPLE)
    return made


def recording_reads(camera: CameraSource) -> List[float]:
    """Wrap `camera.read` to record when each frame arrived (monotonic)."""
    arrivals: List[float] = []
    read = camera.read

    def recorded(*args, **kwargs):
        frame = read(*args, **kwargs)
        if frame is not None:
            arrivals.append(frame.monotonic)
        return frame

    camera.read = recorded
    return arrivals


def test_a_slow_camera_does_not_delay_the_spectrum(spectrometer, stage, tmp_path) -> None:
    # camera: 3 frames at 4 fps, about 0.75 s; spectrometer: 4 x 8 ms + 56 ms on the line, about 0.09 s
    taker = acquirer(spectrometer, stage, tmp_path, fps=4, frames=3, integration_us=8000, coadd=4)
    taker.measure(MeasureJob(origin="command"))  # the camera's pace settles
    measurement = taker.measure(MeasureJob(origin="command"))
    assert len(measurement.frames) == 3
    assert measurement.spectrum_ms < 0.4 * measurement.frames_ms, measurement
    # about the camera's share, not the sum of both
    assert measurement.acquire_ms < measurement.frames_ms + 0.5 * measurement.spectrum_ms
    assert measurement.sample_id == "LOT7-0042" and measurement.sample_id_source == "label"
    # the tiles cut while the frames arrived are the image input inference would build from them
    assert measurement.image.params is IMAGE
    assert np.array_equal(measurement.image.batch, build_image_batch(measurement.frames, 1.0, IMAGE))
    assert not measurement.flags & {"missing_image", "low_signal", "saturation"}
    taker.camera.close()


def test_a_slow_spectrometer_does_not_hold_up_or_drop_frames(spectrometer, stage, tmp_path) -> None:
    # spectrometer on a 9600-baud line: 16 scans of 8 ms, then 640 bytes in about 0.67 s; camera: 8 frames
    # at 20 fps, 0.4 s. The margins are wide because a loaded CI machine slows the frame thread too; the
    # frames are small because the virtual camera renders them in this process (8 frames of 640 x 480 took
    # 808 ms on a loaded machine, longer than the spectrum's 801 ms).
    taker = acquirer(spectrometer, stage, tmp_path, fps=20, frames=8, integration_us=8000, coadd=16,
                     size=(320, 240))
    spectrometer.set_baud_rate(9600)
    arrivals = recording_reads(taker.camera)
    taker.measure(MeasureJob(origin="command"))
    del arrivals[:]
    measurement = taker.measure(MeasureJob(origin="command", sample_id="given-7"))
    assert len(arrivals) == 8 and len(measurement.frames) == 8
    assert "missing_image" not in measurement.flags
    assert measurement.frames_ms < measurement.spectrum_ms, measurement
    # every frame was read while the spectrometer was still busy, none held up by the serial transfer
    # (a frame thread blocked behind it would wait about 0.67 s)
    started = arrivals[0]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert max(gaps) < 0.3, gaps
    assert arrivals[-1] - started < measurement.spectrum_ms / 1000.0
    assert measurement.acquire_ms < measurement.spectrum_ms + 0.5 * measurement.frames_ms
    assert measurement.sample_id == "given-7" and measurement.sample_id_source == "command"
    taker.camera.close()


def test_a_failing_spectrometer_stops_the_frame_thread_and_fails_the_measurement(stage, tmp_path) -> None:
    """A silent line: the measurement fails with the driver's error, and the camera is free again."""
    line = PseudoTerminal()  # nobody answers on it
    try:
        silent = ObpSpectrometer(SerialTransport(line.path, read_timeout_s=0.2), retries=0)
        camera = CameraSource(f"virtual:?stage={stage.path}", 160, 120, 10, read_timeout_s=2.0)
        camera.open()
        taker = Acquirer(silent, camera, QualityGate(), None, CalibrationStore(tmp_path / "calibration"),
                         integration_us=8000, context=lambda: ("conc-01", None), coadd=4,
                         frames_per_measurement=30, min_signal_fraction=0.05)
        started = time.monotonic()
        with pytest.raises(Exception, match="did not answer"):
            taker.measure(MeasureJob(origin="timer"))
        assert time.monotonic() - started < 2.0  # 30 frames at 10 fps would be 3 s: the thread stopped early
        assert camera.read(timeout_s=2.0) is not None
        camera.close()
        silent.transport.close()
    finally:
        line.remove()


@pytest.mark.parametrize("frames, size, max_tiles", [(1, 640, 0), (6, 640, 0), (16, 640, 0), (2, 160, 0),
                                                     (6, 640, 40), (16, 640, 256), (2, 160, 40)])
def test_image_input_built_frame_by_frame_is_build_image_batch(frames: int, size: int, max_tiles: int) -> None:
    """The same batch, row for row, as from all frames at once (also with fewer tiles than rows, with an
    empty field among them, and with `max_tiles`: every usable tile up to it)."""
    from isic_drivers.lab import ReferenceTile, render_frame

    rng = np.random.default_rng(frames)
    images = [render_frame(SAMPLE, rng, size, size * 3 // 4 if size > 200 else size, 1.0)[0] for _ in range(frames)]
    images.append(render_frame(ReferenceTile("white"), rng, size, size, 1.0)[0])
    params = dict(IMAGE, max_tiles=max_tiles) if max_tiles else IMAGE
    builder = ImageBatchBuilder(1.0, params)
    for image in images:
        builder.add(image)
    assert builder.frames == len(images)
    whole = build_image_input(images, 1.0, params)
    assert np.array_equal(builder.batch(), whole.batch)
    # rows: the graph's 16 (the best repeated when fewer are usable), or every usable tile up to max_tiles
    assert len(whole.batch) == max(16, min(whole.tiles_available, max_tiles or 16))
    assert ImageBatchBuilder(1.0, params).batch() is None

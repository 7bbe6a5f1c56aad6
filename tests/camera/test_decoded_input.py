"""Capture -> gate -> model input on virtual-lab frames that went through OpenCV's MJPG codec."""

import cv2
import numpy as np

from isic_drivers.camera import CameraSource
from isic_station.acquisition.quality_gate import QualityGate
from isic_station.preprocess.image import build_image_input, fibre_mask, frame_masks, rescale_frame

PARAMS = {"tile_px": 64, "um_per_px": 1.0, "channels": 1, "tiles_per_measurement": 16, "mean": 0.8, "std": 0.15}
CAMERA_UM_PER_PX = 0.8


def test_decoded_frames_that_pass_the_gate_become_a_batch_of_fibre_tiles(tmp_path, labelled_stage, write_video):
    source = f"virtual:?stage={labelled_stage.path}&seed=4&width=480&height=360&fault=empty&fault_after=3"
    video = tmp_path / "measurement.avi"
    with CameraSource(source, um_per_px=CAMERA_UM_PER_PX) as camera:
        write_video(video, (f.image for f in camera.frames(limit=5)))
    gate = QualityGate()
    with CameraSource(str(video)) as camera:
        frames = [f.image for f in camera.frames()]
    passed = [image for image in frames if gate.assess(image).passed]
    assert len(frames) == 5 and len(passed) == 3
    assert gate.counts()["empty"] == 2

    info = build_image_input(passed, CAMERA_UM_PER_PX, PARAMS)

    assert info.batch.shape == (16, 1, 64, 64) and info.batch.dtype == np.float32
    assert info.tiles_available == 3 * (384 // 64) * (288 // 64)
    assert info.repeated == 0 and info.fibre_tiles == 16
    assert list(info.scores) == sorted(info.scores, reverse=True)
    # row 0 is exactly the decoded, rescaled, grey tile at its origin, normalised with the manifest's numbers,
    # but for the pixels the masks paint over (dust, glare: tests/camera/test_frame_masks.py)
    index, top, left = info.origins[0]
    grey = cv2.cvtColor(rescale_frame(passed[index], CAMERA_UM_PER_PX, 1.0), cv2.COLOR_BGR2GRAY)
    painted = frame_masks(grey, fibre_mask(grey), 1.0).ignored[top : top + 64, left : left + 64]
    assert painted.mean() < 0.1
    expected = (grey[top : top + 64, left : left + 64] / 255.0 - 0.8) / 0.15
    np.testing.assert_allclose(info.batch[0, 0][~painted], expected[~painted], atol=1e-5)


def test_an_empty_field_gives_tiles_without_fibre_which_the_info_reports(labelled_stage):
    with CameraSource(f"virtual:?stage={labelled_stage.path}&fault=empty&width=320&height=240") as camera:
        empty = camera.read().image
    info = build_image_input([empty], 1.0, dict(PARAMS, tiles_per_measurement=4))
    assert info.fibre_tiles == 0


def test_virtual_lab_frames_come_back_from_the_video_in_order_and_close_to_what_was_written(
        tmp_path, labelled_stage, write_video):
    with CameraSource(f"virtual:?stage={labelled_stage.path}&seed=9&width=320&height=240") as camera:
        written = [f.image for f in camera.frames(limit=6)]
    write_video(tmp_path / "lab.avi", written)
    with CameraSource(str(tmp_path / "lab.avi")) as camera:
        decoded = list(camera.frames())
    assert [f.index for f in decoded] == list(range(6))
    differences = np.array([[np.abs(d.image.astype(int) - w.astype(int)).mean() for w in written] for d in decoded])
    assert (differences.argmin(axis=1) == np.arange(6)).all()       # each frame is its own, in order
    assert differences.diagonal().max() < 6.0                         # MJPG loses little (grey levels)

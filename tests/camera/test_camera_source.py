"""CameraSource through OpenCV's real codecs: video files, image folders, vanishing sources, timeouts."""

import functools
import shutil
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest

from isic_common.errors import DeviceError
from isic_drivers.camera import CameraSource, source_kind

SIZE = (160, 120)


def pattern(i: int) -> np.ndarray:
    """A frame that survives MJPG/PNG round trips recognisably: a bright bar whose position encodes i."""
    frame = np.full((SIZE[1], SIZE[0], 3), 60, np.uint8)
    frame[:, 10 * i : 10 * i + 10] = 230
    return frame


def bar_position(frame: np.ndarray) -> int:
    """Which pattern(i) this decoded frame is."""
    return int(np.argmax(frame[:, :, 1].mean(axis=0)) // 10)


def restore_later(delay_s: float, moves: List[Tuple[Path, Path]]) -> threading.Timer:
    """Move each (src, dst) back after `delay_s`, from another thread, while the camera is reading."""

    def restore() -> None:
        for src, dst in moves:
            shutil.move(str(src), str(dst))

    timer = threading.Timer(delay_s, restore)
    timer.start()
    return timer


def test_source_kinds_are_told_apart(tmp_path):
    assert source_kind("0") == "device"
    assert source_kind("/dev/video2") == "device"
    assert source_kind("rtsp://10.0.0.5/stream1") == "url"
    assert source_kind("http://cam.local/mjpg") == "url"
    assert source_kind("virtual:?seed=3") == "virtual"
    assert source_kind(str(tmp_path)) == "folder"
    assert source_kind(str(tmp_path / "bench.avi")) == "file"


def test_a_video_written_with_videowriter_reads_back_in_order_with_timestamps(tmp_path, write_video):
    video = tmp_path / "bench.avi"
    write_video(video, [pattern(i) for i in range(8)])
    before = time.time()
    with CameraSource(str(video)) as camera:
        frames = list(camera.frames())
        stats = camera.stats()
    assert [bar_position(f.image) for f in frames] == list(range(8))
    assert [f.index for f in frames] == list(range(8))
    assert frames[0].image.shape == (SIZE[1], SIZE[0], 3)
    assert all(before <= f.wall_time <= time.time() for f in frames)
    assert all(b.monotonic >= a.monotonic for a, b in zip(frames, frames[1:]))
    assert stats.frames_read == 8
    assert stats.reconnects_last_hour == 0
    assert stats.last_frame_age_s is not None and stats.last_frame_age_s < 5


def test_a_looping_video_starts_again_at_its_end(tmp_path, write_video):
    video = tmp_path / "bench.avi"
    write_video(video, [pattern(i) for i in range(3)])
    with CameraSource(str(video), loop=True) as camera:
        positions = [bar_position(f.image) for f in camera.frames(limit=7)]
        assert camera.stats().reconnects_total == 0
    assert positions == [0, 1, 2, 0, 1, 2, 0]


def test_an_image_folder_is_read_in_name_order(tmp_path):
    for i in (2, 0, 1):
        assert cv2.imwrite(str(tmp_path / f"frame_{i:03d}.png"), pattern(i))
    (tmp_path / "notes.txt").write_text("not an image")
    with CameraSource(str(tmp_path)) as camera:
        frames = list(camera.frames())
    assert [bar_position(f.image) for f in frames] == [0, 1, 2]
    np.testing.assert_array_equal(frames[1].image, pattern(1))


def test_a_folder_emptied_mid_stream_reconnects_when_refilled_and_counts_it(tmp_path):
    folder, away = tmp_path / "frames", tmp_path / "away"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"f{i}.png"), pattern(i))
    camera = CameraSource(str(folder), backoff_initial_s=0.05, read_timeout_s=5.0).open()
    assert bar_position(camera.read().image) == 0
    assert bar_position(camera.read().image) == 1
    away.mkdir()
    for path in sorted(folder.iterdir()):
        shutil.move(str(path), str(away / path.name))
    timer = restore_later(0.5, [(away / p.name, folder / p.name) for p in sorted(away.iterdir())])
    frame = camera.read()
    timer.join()
    stats = camera.stats()
    camera.close()
    assert bar_position(frame.image) == 2
    assert stats.reconnects_last_hour == 1
    assert stats.connected
    assert "no image files" in stats.last_error


def test_a_looping_video_renamed_away_and_restored_reconnects(tmp_path, write_video):
    video, away = tmp_path / "bench.avi", tmp_path / "bench.avi.moved"
    write_video(video, [pattern(i) for i in range(3)])
    camera = CameraSource(str(video), loop=True, backoff_initial_s=0.05).open()
    assert [bar_position(f.image) for f in camera.frames(limit=3)] == [0, 1, 2]
    video.rename(away)
    timer = restore_later(0.5, [(away, video)])
    frame = camera.read()
    timer.join()
    stats = camera.stats()
    camera.close()
    assert bar_position(frame.image) == 0
    assert stats.reconnects_last_hour == 1
    assert "no such video file" in stats.last_error


def test_a_missing_source_is_a_device_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere.avi"
    with pytest.raises(DeviceError, match="nowhere.avi"):
        CameraSource(str(missing)).open()


def test_no_frame_within_the_timeout_raises_after_backing_off_not_busy_looping(tmp_path, caplog):
    camera = CameraSource(str(tmp_path / "nowhere.avi"), backoff_initial_s=0.1, backoff_max_s=0.4)
    started = time.monotonic()
    with pytest.raises(DeviceError, match=r"no frame within 1.0 s .*no such video file"):
        camera.read(timeout_s=1.0)
    elapsed = time.monotonic() - started
    attempts = [r for r in caplog.records if "next attempt" in r.getMessage()]
    assert 0.9 <= elapsed < 2.0
    # 0.1 + 0.2 + 0.4 + 0.4 ... s between attempts: about four in a second, not thousands.
    assert 2 <= len(attempts) <= 6
    assert camera.stats().connected is False


def test_a_device_that_does_not_exist_is_a_device_error():
    with pytest.raises(DeviceError, match="/dev/video97"):
        CameraSource("/dev/video97", width=640, height=480, fps=15).open()


def test_an_unreadable_image_in_a_folder_is_skipped_not_reconnected_forever(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), pattern(0))
    (tmp_path / "b.png").write_bytes(b"not a png")
    cv2.imwrite(str(tmp_path / "c.png"), pattern(2))
    with CameraSource(str(tmp_path)) as camera:
        positions = [bar_position(f.image) for f in camera.frames()]
        assert camera.stats().reconnects_total == 0
    assert positions == [0, 2]


def test_close_from_another_thread_ends_a_read_waiting_to_reconnect(tmp_path):
    camera = CameraSource(str(tmp_path / "nowhere.avi"), backoff_initial_s=5.0)
    closer = threading.Timer(0.3, camera.close)
    closer.start()
    started = time.monotonic()
    with pytest.raises(DeviceError, match="read after close"):
        camera.read(timeout_s=20.0)
    closer.join()
    assert time.monotonic() - started < 3.0


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server (stdlib) serving tmp_path/www on a free port: (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_stream_is_read_through_ffmpeg_and_reconnected_when_it_ends(http_folder, write_video):
    folder, base = http_folder
    write_video(folder / "stream.avi", [pattern(i) for i in range(4)])
    with CameraSource(f"{base}/stream.avi", backoff_initial_s=0.05, read_timeout_s=5.0) as camera:
        positions = [bar_position(f.image) for f in camera.frames(limit=6)]
        stats = camera.stats()
    assert positions == [0, 1, 2, 3, 0, 1]
    assert stats.reconnects_total == 1 and "no frame" in stats.last_error


def test_a_url_that_never_answers_fails_within_the_open_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/stream.avi"
        started = time.monotonic()
        with pytest.raises(DeviceError, match="127.0.0.1"):
            CameraSource(url, read_timeout_s=1.0).open()
        assert time.monotonic() - started < 4.0
    finally:
        silent.close()

"""CameraSource: frames with timestamps from any camera-like source, reconnecting with backoff.

One object for every kind of source the station meets (a UVC device on the board, a video file or
image folder on a bench, a network stream, the virtual microscope), so the daemon has one code path
for a flaky cable, a vanished device and a stalled stream: the source is reopened with exponential
backoff (never a busy loop) and every reconnect and stall is counted for the stats topic.
"""

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from isic_common.backoff import Backoff
from isic_common.errors import DeviceError
from isic_drivers.camera.readers import CaptureReader, EndOfStream, FolderReader, FrameReader
from isic_drivers.camera.stats import CameraStats, StatsRecorder

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
VIRTUAL_PREFIX = "virtual:"


@dataclass(frozen=True)
class Frame:
    """One BGR uint8 frame, its sequence number and when it was grabbed (wall clock and monotonic)."""

    image: np.ndarray
    index: int
    wall_time: float
    monotonic: float


def source_kind(source: str) -> str:
    """What `source` names: 'virtual', 'device', 'url', 'folder' or 'file'."""
    if source.startswith(VIRTUAL_PREFIX):
        return "virtual"
    if re.fullmatch(r"\d+", source) or source.startswith("/dev/"):
        return "device"
    if urlsplit(source).scheme.lower() in URL_SCHEMES:
        return "url"
    return "folder" if Path(source).is_dir() else "file"


class CameraSource:
    """Frames from `source`: a device index ("0") or path ("/dev/video0"), a video file, an image folder,
    a URL (rtsp/http), or "virtual:" (the virtual microscope, options as "virtual:?seed=3&dwell=2").

    `read()` returns the next Frame, None when a finite source (file, folder, not looping) has
    ended, and raises DeviceError naming the source when no frame arrives within the read timeout
    (it keeps reconnecting across calls). A read slower than `stall_s` counts as a stall.
    """

    def __init__(
        self,
        source: str,
        width: Optional[int] = None,
        height: Optional[int] = None,
        fps: Optional[float] = None,
        um_per_px: float = 1.0,
        loop: bool = False,
        read_timeout_s: float = 5.0,
        stall_s: float = 2.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.source = source
        self.um_per_px = um_per_px
        self.read_timeout_s = read_timeout_s
        self.stall_s = stall_s
        self._reader = self._make_reader(source, width, height, fps, loop, options or {})
        self._stats = StatsRecorder(source)
        self._closed = threading.Event()
        # Held while the reader opens, reads or closes: close() from another thread waits for a
        # read in progress (at most the read timeout) instead of releasing a capture under it.
        self._io = threading.Lock()
        self._is_open = False
        self._ever_opened = False
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._next_attempt = 0.0
        self._index = 0

    def _make_reader(
        self, source: str, width: Optional[int], height: Optional[int], fps: Optional[float], loop: bool,
        options: Mapping[str, Any],
    ) -> FrameReader:
        kind = source_kind(source)
        if kind == "virtual":
            from isic_drivers.emulators.microscope import VirtualMicroscope

            query: Dict[str, Any] = dict(parse_qsl(urlsplit(source[len(VIRTUAL_PREFIX):]).query))
            query.update(options)
            return VirtualMicroscope.from_options(query, width=width, height=height, fps=fps,
                                                  um_per_px=self.um_per_px)
        if kind == "folder":
            return FolderReader(source, loop=loop)
        target = int(source) if kind == "device" and source.isdigit() else source
        return CaptureReader(target, kind, width, height, fps, loop=loop, timeout_s=self.read_timeout_s)

    @property
    def reader(self) -> FrameReader:
        """The reader behind this source (the virtual microscope exposes its faults through it)."""
        return self._reader

    def open(self) -> "CameraSource":
        """Open the source now; DeviceError (naming it) if it cannot be opened."""
        self._closed.clear()
        self._connect()
        return self

    def _connect(self) -> None:
        try:
            with self._io:
                self._reader.open()
        except DeviceError as exc:
            delay = self._backoff.next_delay()
            self._next_attempt = time.monotonic() + delay
            self._stats.connection(False, str(exc))
            log.warning("%s; next attempt in %.1f s", exc, delay)
            raise
        if self._ever_opened:
            self._stats.reconnect()
            log.info("camera %s reconnected after %d failed attempt(s)", self.source, self._backoff.failures)
        self._ever_opened = True
        self._is_open = True
        self._stats.connection(True)

    def _lose(self, exc: DeviceError) -> None:
        with self._io:
            self._reader.close()
        self._is_open = False
        self._backoff.reset()
        self._next_attempt = time.monotonic() + self._backoff.next_delay()
        self._stats.connection(False, str(exc))
        log.warning("%s; reconnecting", exc)

    def read(self, timeout_s: Optional[float] = None) -> Optional[Frame]:
        """The next frame (None once a finite source has ended); DeviceError if none within the timeout."""
        timeout = self.read_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            now = time.monotonic()
            if not self._is_open:
                wait = self._next_attempt - now
                if now + max(wait, 0.0) > deadline:
                    self._closed.wait(max(0.0, deadline - now))
                    break
                if wait > 0 and self._closed.wait(wait):
                    break
                try:
                    self._connect()
                except DeviceError:
                    continue
            started = time.monotonic()
            try:
                with self._io:
                    if self._closed.is_set():
                        break
                    image = self._reader.read()
            except EndOfStream:
                return None
            except DeviceError as exc:
                self._note_stall(time.monotonic() - started)
                self._lose(exc)
                continue
            grabbed = time.monotonic()
            self._note_stall(grabbed - started)
            self._backoff.reset()
            self._stats.frame(grabbed)
            self._index += 1
            return Frame(image, self._index - 1, time.time(), grabbed)
        if self._closed.is_set():
            raise DeviceError(f"camera {self.source}: read after close")
        snapshot = self._stats.snapshot()
        raise DeviceError(
            f"camera {self.source}: no frame within {timeout:.1f} s"
            + (f" (last error: {snapshot.last_error})" if snapshot.last_error else "")
        )

    def _note_stall(self, took_s: float) -> None:
        if took_s > self.stall_s:
            self._stats.stall()
            log.warning("camera %s stalled: a read took %.1f s (limit %.1f s)", self.source, took_s, self.stall_s)

    def frames(self, limit: Optional[int] = None) -> Iterator[Frame]:
        """Frames until the source ends or `limit` frames were read."""
        count = 0
        while limit is None or count < limit:
            frame = self.read()
            if frame is None:
                return
            count += 1
            yield frame

    def stats(self) -> CameraStats:
        """Connection-quality figures as of now (safe to call from another thread)."""
        return self._stats.snapshot()

    def close(self) -> None:
        """Release the source; a read waiting for a reconnect returns at once."""
        self._closed.set()
        with self._io:
            self._reader.close()
        self._is_open = False
        self._stats.connection(False)

    def __enter__(self) -> "CameraSource":
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

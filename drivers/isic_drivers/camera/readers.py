"""The kinds of frame source a CameraSource can read: OpenCV captures (device, file, URL) and image folders.

A reader only opens, reads and closes; reconnecting, backoff, timestamps and statistics are the
CameraSource's job, so every kind (and the virtual microscope) gets them the same way.
A reader signals a lost source with DeviceError and a finished finite source with EndOfStream.
"""

import abc
import logging
import sys
from pathlib import Path
from typing import List, Optional, Union

import cv2
import numpy as np

from isic_common.errors import DeviceError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class EndOfStream(Exception):
    """A finite source (a file or a folder, not looping) has no more frames."""


class FrameReader(abc.ABC):
    """One kind of frame source: `open()` (DeviceError if it cannot), `read()`, `close()`."""

    name = "source"

    @abc.abstractmethod
    def open(self) -> None:
        """Open (or reopen) the source; DeviceError naming it when it cannot be opened."""

    @abc.abstractmethod
    def read(self) -> np.ndarray:
        """The next BGR uint8 frame; DeviceError when the source is lost, EndOfStream when done."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the source (safe to call when it is not open)."""


class CaptureReader(FrameReader):
    """cv2.VideoCapture on a device (index or /dev path), a video file, or a stream URL.

    Devices get the configured resolution, frame rate and a one-frame buffer (so a read returns a
    fresh frame, not one queued seconds ago); devices and URLs get OpenCV's own open and read
    timeouts, so a dead device cannot block a read forever. A file at its end is reopened when
    looping (which also notices a file that vanished) and ends otherwise.
    """

    def __init__(
        self,
        target: Union[int, str],
        kind: str,
        width: Optional[int] = None,
        height: Optional[int] = None,
        fps: Optional[float] = None,
        loop: bool = False,
        timeout_s: float = 5.0,
    ) -> None:
        if kind not in ("device", "file", "url"):
            raise ValueError(f"unknown capture kind {kind!r}")
        self.target = target
        self.kind = kind
        self.name = f"{kind} {target}"
        self.width, self.height, self.fps = width, height, fps
        self.loop = loop
        self.timeout_ms = int(timeout_s * 1000)
        self._capture: Optional[cv2.VideoCapture] = None

    def open(self) -> None:
        if self.kind == "file" and not Path(str(self.target)).is_file():
            raise DeviceError(f"camera {self.name}: no such video file")
        params: List[int] = []
        if self.kind != "file":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        api = cv2.CAP_V4L2 if self.kind == "device" and sys.platform.startswith("linux") else cv2.CAP_ANY
        capture = cv2.VideoCapture(self.target, api, params)
        if not capture.isOpened():
            capture.release()
            raise DeviceError(f"camera {self.name}: OpenCV cannot open it (unplugged, busy, or not a video?)")
        if self.kind == "device":
            self._configure_device(capture)
        self._capture = capture

    def _configure_device(self, capture: cv2.VideoCapture) -> None:
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.width and self.height:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            got = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            if got != (self.width, self.height):
                log.warning("camera %s gives %dx%d, not the configured %dx%d",
                            self.name, got[0], got[1], self.width, self.height)
        if self.fps:
            capture.set(cv2.CAP_PROP_FPS, self.fps)

    def read(self) -> np.ndarray:
        if self._capture is None:
            raise DeviceError(f"camera {self.name}: read before open")
        ok, frame = self._capture.read()
        if ok:
            return frame
        if self.kind != "file":
            raise DeviceError(f"camera {self.name}: no frame (device gone or stream stalled)")
        if not self.loop:
            raise EndOfStream(self.name)
        self.close()
        self.open()
        ok, frame = self._capture.read()
        if not ok:
            raise DeviceError(f"camera {self.name}: the video file has no readable frame")
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FolderReader(FrameReader):
    """The image files of a folder in sorted name order, as frames (a bench's stand-in for a camera).

    The folder is listed again at every open, so files added later are seen after a reconnect;
    the position is kept across reconnects, so a folder emptied and refilled continues where it was.
    """

    def __init__(self, folder: Union[str, Path], loop: bool = False) -> None:
        self.folder = Path(folder)
        self.name = f"folder {self.folder}"
        self.loop = loop
        self._files: List[Path] = []
        self._position = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise DeviceError(f"camera {self.name}: no such folder")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DeviceError(f"camera {self.name}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self._files = files

    def read(self) -> np.ndarray:
        """The next image; a vanished file means the folder is going away (DeviceError), an
        unreadable one is skipped with a warning (a reconnect would meet it again)."""
        for _ in range(len(self._files)):
            if self._position >= len(self._files):
                if not self.loop:
                    raise EndOfStream(self.name)
                self._position = 0
            path = self._files[self._position]
            self._position += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame
            if not path.exists():
                self._position -= 1
                raise DeviceError(f"camera {self.name}: image {path.name} is gone")
            log.warning("camera %s: skipping %s, not a readable image", self.name, path.name)
        if not self.loop and self._position >= len(self._files):
            raise EndOfStream(self.name)
        raise DeviceError(f"camera {self.name}: none of its {len(self._files)} image files is readable")

    def close(self) -> None:
        self._files = []

"""Connection-quality figures of a camera: frames, reconnects and stalls in the last hour, frame age.

Modelled on what Frigate reports per camera, so a technician can tell a flaky cable (many
reconnects) from a starving pipeline (stalls) from a healthy camera at a glance.
"""

import collections
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Deque, Dict, Optional

WINDOW_S = 3600.0
FPS_WINDOW_FRAMES = 30


class RollingCount:
    """How many events happened in the last `window_s` seconds (old events are forgotten)."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._events: Deque[float] = collections.deque()
        self.total = 0

    def add(self) -> None:
        """Record one event now."""
        self._events.append(self._clock())
        self.total += 1

    def count(self) -> int:
        """Events within the window, as of now."""
        horizon = self._clock() - self.window_s
        while self._events and self._events[0] < horizon:
            self._events.popleft()
        return len(self._events)


@dataclass(frozen=True)
class CameraStats:
    """One snapshot of a camera's connection quality (`to_dict()` for the stats topic and JSON)."""

    source: str
    connected: bool
    frames_read: int
    fps: float
    last_frame_age_s: Optional[float]
    reconnects_last_hour: int
    stalls_last_hour: int
    reconnects_total: int
    stalls_total: int
    last_error: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready dict with the field names as keys."""
        return asdict(self)


class StatsRecorder:
    """Thread-safe counters a CameraSource updates and a health thread may read at any time."""

    def __init__(self, source: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._source = source
        self._clock = clock
        self._lock = threading.Lock()
        self._reconnects = RollingCount(clock=clock)
        self._stalls = RollingCount(clock=clock)
        self._frame_times: Deque[float] = collections.deque(maxlen=FPS_WINDOW_FRAMES)
        self._frames = 0
        self._connected = False
        self._last_error: Optional[str] = None

    def frame(self, monotonic: float) -> None:
        """A frame arrived at `monotonic`."""
        with self._lock:
            self._frames += 1
            self._frame_times.append(monotonic)

    def reconnect(self) -> None:
        with self._lock:
            self._reconnects.add()

    def stall(self) -> None:
        with self._lock:
            self._stalls.add()

    def connection(self, connected: bool, error: Optional[str] = None) -> None:
        """The source opened (True) or was lost (False, with why)."""
        with self._lock:
            self._connected = connected
            if error is not None:
                self._last_error = error

    def snapshot(self) -> CameraStats:
        """The figures as of now."""
        with self._lock:
            times = self._frame_times
            span = times[-1] - times[0] if len(times) > 1 else 0.0
            return CameraStats(
                source=self._source,
                connected=self._connected,
                frames_read=self._frames,
                fps=round((len(times) - 1) / span, 2) if span > 0 else 0.0,
                last_frame_age_s=round(self._clock() - times[-1], 3) if times else None,
                reconnects_last_hour=self._reconnects.count(),
                stalls_last_hour=self._stalls.count(),
                reconnects_total=self._reconnects.total,
                stalls_total=self._stalls.total,
                last_error=self._last_error,
            )

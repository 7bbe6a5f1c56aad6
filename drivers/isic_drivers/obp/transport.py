"""OBP frames over a serial port (pyserial): write a frame, read the next valid one, survive a pulled cable.

pyserial gives the port; this adds what a station needs on top of it: frames found in a noisy byte
stream (FrameScanner), a deadline per read, and a port that disappears (USB serial unplugged, an
emulator reopening its pseudo-terminal) reopened with exponential backoff, never in a busy loop.
Counters for health (reconnects, failed opens, bytes thrown away) are kept in `stats`.
"""

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import serial

from isic_common.backoff import Backoff
from isic_common.errors import ConfigError
from isic_drivers.obp.codec import DEFAULT_MAX_PAYLOAD, Frame, ObpError, encode_frame
from isic_drivers.obp.scanner import FrameScanner

log = logging.getLogger(__name__)

# RS-232 as libseabreeze drives it: 8N1, i.e. one start, eight data and one stop bit per byte.
LINE_BITS_PER_BYTE = 10


def line_seconds(byte_count: int, baud: int) -> float:
    """How long `byte_count` bytes take on an 8N1 line at `baud`."""
    return byte_count * LINE_BITS_PER_BYTE / float(baud)


class ReplyTimeout(ObpError):
    """No valid frame arrived before the deadline."""


class LinkDown(ObpError):
    """The serial port could not be opened (again) before the deadline."""


@dataclass
class TransportStats:
    """Counters of the link since the transport was made."""

    opens: int = 0
    reconnects: int = 0
    open_failures: int = 0
    link_losses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    frames_written: int = 0


class SerialTransport:
    """One serial port carrying OBP frames, reopened with backoff whenever it goes away.

    `read_timeout_s` is the default deadline of `read_frame`; `poll_s` is how long one blocking read
    waits in select() (it bounds how late a deadline is noticed, not the CPU use); reopening waits
    `backoff_initial_s`, doubled after each failure up to `backoff_max_s`. When the line has been
    silent for `idle_resync_s` with an incomplete frame pending, that frame was cut short (or its
    length field was hit by noise) and the scanner gives it up instead of waiting for bytes that
    will not come.
    """

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        read_timeout_s: float = 1.0,
        write_timeout_s: float = 1.0,
        poll_s: float = 0.05,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        idle_resync_s: float = 0.1,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self.poll_s = poll_s
        self.idle_resync_s = idle_resync_s
        self.scanner = FrameScanner(max_payload)
        self.stats = TransportStats()
        self._serial: Optional[serial.Serial] = None
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._next_attempt = 0.0
        self._last_error = ""
        self._last_data = time.monotonic()

    def __enter__(self) -> "SerialTransport":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self, timeout_s: Optional[float] = None) -> None:
        """Open the port, retrying with backoff for up to `timeout_s` (default: the read timeout)."""
        self._ensure_open(time.monotonic() + (self.read_timeout_s if timeout_s is None else timeout_s))

    def close(self) -> None:
        """Close the port; the next read or write opens it again."""
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                log.debug("closing %s failed", self.port, exc_info=True)
            self._serial = None

    def set_baudrate(self, baudrate: int) -> None:
        """Change the line speed (now if open, and for every reopen)."""
        self.baudrate = baudrate
        if self._serial is not None:
            try:
                self._serial.baudrate = baudrate
            except ValueError as exc:
                raise ConfigError(f"serial port {self.port}: baud rate {baudrate}: {exc}") from exc
            except (serial.SerialException, OSError) as exc:
                self._lost(exc)

    def write_frame(self, frame: Frame, timeout_s: Optional[float] = None) -> None:
        """Send one frame; LinkDown if the port cannot be (re)opened in time, or is lost while writing."""
        deadline = time.monotonic() + (self.write_timeout_s if timeout_s is None else timeout_s)
        self._ensure_open(deadline)
        data = encode_frame(frame)
        try:
            assert self._serial is not None
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
            raise LinkDown(f"serial port {self.port} was lost while writing: {exc}") from exc
        self.stats.bytes_written += len(data)
        self.stats.frames_written += 1

    def read_frame(self, timeout_s: Optional[float] = None) -> Frame:
        """The next valid frame from the line; ReplyTimeout or LinkDown when none comes before the deadline."""
        deadline = time.monotonic() + (self.read_timeout_s if timeout_s is None else timeout_s)
        while True:
            frame = self.scanner.next_frame()
            if frame is not None:
                return frame
            if time.monotonic() >= deadline:
                raise ReplyTimeout(
                    f"no valid OBP frame from {self.port} within the deadline "
                    f"({self.scanner.pending} bytes pending)"
                )
            self._ensure_open(deadline)
            if self._read_available():
                continue
            if self.scanner.pending and time.monotonic() - self._last_data >= self.idle_resync_s:
                frame = self.scanner.flush()
                if frame is not None:
                    return frame

    def health(self) -> Dict[str, Any]:
        """Counters for the station's health report."""
        figures = asdict(self.stats)
        figures.update({f"scanner_{key}": value for key, value in asdict(self.scanner.stats).items()})
        figures.update(port=self.port, open=self.is_open, last_error=self._last_error)
        return figures

    def _read_available(self) -> bool:
        """Feed what the port has (waiting up to `poll_s` for a first byte); False when nothing came."""
        port = self._serial
        assert port is not None
        try:
            waiting = port.in_waiting
            data = port.read(waiting if waiting > 0 else 1)
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)
            return False
        if not data:
            return False
        self._last_data = time.monotonic()
        self.stats.bytes_read += len(data)
        self.scanner.feed(data)
        return True

    def _lost(self, exc: BaseException) -> None:
        """The port went away: close it and wait a backoff step before the first reopen."""
        log.warning("serial port %s lost: %s; reopening with backoff", self.port, exc)
        self._last_error = str(exc)
        self.stats.link_losses += 1
        self.close()
        self.scanner.clear()
        self._next_attempt = time.monotonic() + self._backoff.next_delay()

    def _ensure_open(self, deadline: float) -> None:
        while self._serial is None:
            now = time.monotonic()
            if self._next_attempt > now:
                if self._next_attempt > deadline:
                    time.sleep(max(0.0, deadline - now))
                    raise LinkDown(
                        f"serial port {self.port} is not available ({self._last_error}); "
                        f"{self.stats.open_failures} failed opens so far, still retrying"
                    )
                time.sleep(self._next_attempt - now)
            try:
                self._serial = serial.Serial(
                    self.port,
                    self.baudrate,
                    timeout=self.poll_s,
                    write_timeout=self.write_timeout_s,
                    exclusive=True,
                )
            except ValueError as exc:
                raise ConfigError(f"serial port {self.port} at {self.baudrate} baud: {exc}") from exc
            except (serial.SerialException, OSError) as exc:
                self.stats.open_failures += 1
                self._last_error = str(exc)
                delay = self._backoff.next_delay()
                self._next_attempt = time.monotonic() + delay
                log.debug("opening %s failed (%s); next try in %.2f s", self.port, exc, delay)
                continue
            if self.stats.opens:
                self.stats.reconnects += 1
                log.info("serial port %s reopened (reconnect %d)", self.port, self.stats.reconnects)
            self.stats.opens += 1
            self._backoff.reset()

"""The spectrometer as the station uses it: serial number, wavelength axis, integration time, trigger
mode, raw and co-added spectra, over OBP on a SerialTransport.

Co-adding N scans asks the instrument to average them itself ("scans to average", OBP 0x00120010)
and reads one spectrum: on a serial line the transfer of a spectrum (576 bytes, 50 ms at 115200 baud)
costs more than its integration, so N transfers would dominate the measurement. An instrument that
NACKs the message (its firmware lacks it: unknown message type, or a plain NACK) or refuses N gets N
single scans averaged here instead; the setting is made again after every reopen of the port (a
power-cycled instrument forgets it). Both give the mean of N scans; the instrument's is rounded to
whole counts (the wire's uint16), which adds 0.3 counts RMS, far below the detector noise.

Each request carries a fresh `regarding` number; only the reply that echoes it (and the request's
message type) is accepted, so a late reply to an earlier, retried request is never mistaken for the
current one. A request is sent again, up to `retries` times, after a timeout, a lost line, or a
NACK that says sending again can help (bad checksum, device busy).
"""

import logging
import time
from typing import Any, Dict, List, Optional

import numpy as np

from isic_drivers.obp.codec import (
    DeviceNack,
    DeviceRejected,
    Flag,
    Frame,
    FrameError,
    InvalidPayload,
    MessageType,
    ObpError,
    UnknownMessageType,
    device_error,
    pack_request,
    unpack_reply,
)
from isic_drivers.obp.transport import LinkDown, ReplyTimeout, SerialTransport

log = logging.getLogger(__name__)

# Counts travel as uint16 (`raw_spectrum`): a 16-bit detector's full scale, and the most any
# instrument can report over OBP. A model with a smaller ADC (a 14-bit one: 16383) is given its own.
WIRE_FULL_SCALE_COUNTS = float(np.iinfo(np.uint16).max)


class ObpSpectrometer:
    """An OBP spectrometer on a serial transport; every failure is an ObpError (a DeviceError)."""

    def __init__(self, transport: SerialTransport, retries: int = 3, reply_timeout_s: Optional[float] = None,
                 full_scale_counts: float = WIRE_FULL_SCALE_COUNTS) -> None:
        self.transport = transport
        self.full_scale_counts = float(full_scale_counts)  # the counts at which the detector clips
        self.spectra_read = 0  # raw spectra carried by the link (a co-added spectrum: one per transfer)
        self.retries = retries
        self.reply_timeout_s = transport.read_timeout_s if reply_timeout_s is None else reply_timeout_s
        self.pixel_count: Optional[int] = None
        self.integration_us: Optional[int] = None
        # On-instrument averaging: None = not asked yet on this connection, True/False = offered or not.
        self.averaging_supported: Optional[bool] = None
        self.scans_to_average = 1
        self._averaging_open = -1
        # Temperature sensors: their count on the connection `_sensors_open` (0: the firmware has none).
        self.temperature_sensors: Optional[int] = None
        self._sensors_open = -1
        self.retried_requests = 0
        self.stale_replies = 0
        self._regarding = int(time.monotonic() * 1000) & 0xFFFFFFFF

    def request(self, message_type: int, payload: bytes = b"", ack: bool = False,
                busy_s: float = 0.0) -> Frame:
        """Send one request and return its reply; retries a bounded number of times.

        `ack` asks the instrument to acknowledge a command that returns no data (a setting); `busy_s`
        is how long the instrument works before it answers (integration), added to the reply timeout.
        """
        last_error: Optional[ObpError] = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried_requests += 1
                log.info("retrying 0x%08x (attempt %d) after: %s", message_type, attempt + 1, last_error)
            self._regarding = (self._regarding + 1) & 0xFFFFFFFF
            frame = Frame(message_type, payload, flags=Flag.ACK_REQUESTED if ack else 0, regarding=self._regarding)
            try:
                self.transport.write_frame(frame)
                reply = self._await_reply(frame, self.reply_timeout_s + busy_s)
            except (ReplyTimeout, LinkDown) as exc:
                last_error = exc
                continue
            error = device_error(reply)
            if error is None:
                return reply
            if not error.retryable:
                raise error
            last_error = error
        if isinstance(last_error, DeviceRejected):
            raise last_error
        raise type(last_error)(
            f"spectrometer on {self.transport.port} did not answer message 0x{message_type:08x} in "
            f"{self.retries + 1} attempts ({last_error}); check the cable, the port name and the baud rate "
            f"({self.transport.baudrate})"
        )

    def _await_reply(self, request: Frame, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self.transport.read_frame(max(0.0, deadline - time.monotonic()))
            answers = reply.flags & (Flag.RESPONSE | Flag.ACK | Flag.NACK)
            if answers and reply.regarding == request.regarding and reply.message_type == request.message_type:
                return reply
            self.stale_replies += 1
            log.debug("ignoring frame 0x%08x regarding %d (waiting for %d)", reply.message_type,
                      reply.regarding, request.regarding)

    def serial_number(self) -> str:
        """The instrument's serial number (ASCII)."""
        payload = self.request(MessageType.GET_SERIAL_NUMBER).payload
        return payload.split(b"\0", 1)[0].decode("ascii", errors="replace")

    def wavelength_coefficients(self) -> List[float]:
        """The calibration polynomial c_0..c_n: lambda(i) = sum c_k i**k, in nm."""
        kind = MessageType.GET_WAVELENGTH_COEFFICIENT_COUNT
        (count,) = unpack_reply(kind, self.request(kind).payload)
        kind = MessageType.GET_WAVELENGTH_COEFFICIENT
        return [
            float(unpack_reply(kind, self.request(kind, pack_request(kind, index)).payload)[0])
            for index in range(int(count))
        ]

    def wavelengths(self, pixel_count: Optional[int] = None) -> np.ndarray:
        """The wavelength of each pixel in nm (pixel count from one spectrum unless given)."""
        if pixel_count is None:
            pixel_count = self.pixel_count if self.pixel_count is not None else len(self.raw_spectrum())
        pixels = np.arange(pixel_count, dtype=np.float64)
        return np.polynomial.polynomial.polyval(pixels, np.asarray(self.wavelength_coefficients(), dtype=np.float64))

    def integration_time_us(self) -> int:
        """The integration time in microseconds."""
        kind = MessageType.GET_INTEGRATION_TIME
        return int(unpack_reply(kind, self.request(kind).payload)[0])

    def set_integration_time_us(self, microseconds: int) -> None:
        """Set the integration time; InvalidPayload (naming the value) when the instrument refuses it."""
        kind = MessageType.SET_INTEGRATION_TIME
        if not 0 < microseconds <= 0xFFFFFFFF:
            raise InvalidPayload(f"integration time {microseconds} us is not a positive 32-bit number")
        try:
            self.request(kind, pack_request(kind, int(microseconds)), ack=True)
        except InvalidPayload as exc:
            raise InvalidPayload(
                f"spectrometer refused integration time {microseconds} us: {exc}",
                exc.error_number, exc.message_type, exc.flags,
            ) from exc
        self.integration_us = int(microseconds)

    def get_scans_to_average(self) -> int:
        """How many scans the instrument averages into each spectrum it sends."""
        kind = MessageType.GET_SCANS_TO_AVERAGE
        return int(unpack_reply(kind, self.request(kind).payload)[0])

    def set_scans_to_average(self, scans: int) -> bool:
        """Ask the instrument to average `scans` scans per spectrum; False when it does not offer that
        (NACK: unknown message type or no error number, or `scans` refused as invalid)."""
        kind = MessageType.SET_SCANS_TO_AVERAGE
        if not 0 < scans <= 0xFFFF:
            raise ValueError(f"scans to average {scans} is not in 1..65535")
        opens = self.transport.stats.opens
        if opens != self._averaging_open:  # a new connection: the instrument may have been reset
            self.averaging_supported, self.scans_to_average, self._averaging_open = None, 1, opens
        try:
            self.request(kind, pack_request(kind, int(scans)), ack=True)
        except (UnknownMessageType, DeviceNack) as exc:
            if self.averaging_supported is None:
                log.info("spectrometer on %s does not average on the instrument (%s): co-adding single scans "
                         "on the host", self.transport.port, exc)
            self.averaging_supported, self._averaging_open = False, self.transport.stats.opens
            return False
        except InvalidPayload as exc:
            log.warning("spectrometer on %s refused %d scans to average (%s): co-adding on the host",
                        self.transport.port, scans, exc)
            return False
        self.averaging_supported, self.scans_to_average = True, int(scans)
        self._averaging_open = self.transport.stats.opens
        return True

    def temperature_c(self, sensor: int = 0) -> Optional[float]:
        """Sensor `sensor`'s temperature in degrees Celsius, or None when the instrument has no such sensor
        (a count below `sensor` + 1, or a firmware that NACKs the message: asked once per connection)."""
        if self._sensors_open != self.transport.stats.opens:
            kind = MessageType.GET_TEMPERATURE_COUNT
            try:
                (count,) = unpack_reply(kind, self.request(kind).payload)
            except (UnknownMessageType, DeviceNack) as exc:
                log.info("spectrometer on %s reports no temperature (%s)", self.transport.port, exc)
                count = 0
            self.temperature_sensors, self._sensors_open = int(count), self.transport.stats.opens
        if not 0 <= sensor < (self.temperature_sensors or 0):
            return None
        kind = MessageType.GET_TEMPERATURE
        return float(unpack_reply(kind, self.request(kind, pack_request(kind, sensor)).payload)[0])

    def set_trigger_mode(self, mode: int) -> None:
        """Set the trigger mode (0 = free running; other modes as the instrument defines them)."""
        kind = MessageType.SET_TRIGGER_MODE
        self.request(kind, pack_request(kind, mode), ack=True)

    def baud_rate(self) -> int:
        """The RS-232 baud rate the instrument reports."""
        kind = MessageType.GET_BAUD_RATE
        return int(unpack_reply(kind, self.request(kind).payload)[0])

    def set_baud_rate(self, baud: int) -> None:
        """Switch the instrument's line speed, then ours: the ACK still comes at the old speed."""
        kind = MessageType.SET_BAUD_RATE
        self.request(kind, pack_request(kind, int(baud)), ack=True)
        self.transport.set_baudrate(int(baud))

    def raw_spectrum(self) -> np.ndarray:
        """One spectrum: counts per pixel (uint16, little-endian on the wire), the mean of the instrument's
        scans to average (one scan unless `set_scans_to_average` or `coadd` changed it)."""
        busy_s = (self.integration_us or 0) * self.scans_to_average / 1e6
        payload = self.request(MessageType.GET_RAW_SPECTRUM, busy_s=busy_s).payload
        if len(payload) % 2:
            raise FrameError(f"raw spectrum of {len(payload)} bytes is not a whole number of uint16 pixels")
        counts = np.frombuffer(payload, dtype="<u2").astype(np.uint16)
        self.pixel_count = len(counts)
        self.spectra_read += 1
        return counts

    def coadd(self, scans: int) -> np.ndarray:
        """The mean of `scans` scans (float64): noise falls with the square root of `scans`. Averaged on
        the instrument (one transfer) where it offers that, else `scans` transfers averaged here."""
        if scans < 1:
            raise ValueError(f"co-adding needs at least one scan, got {scans}")
        if self._instrument_averages(scans):
            counts = self.raw_spectrum()
            if self._averaging_open == self.transport.stats.opens:
                return counts.astype(np.float64)
            log.info("port %s reopened during an averaged spectrum: setting the instrument up again",
                     self.transport.port)  # it may have been reset to single scans
            return self.coadd(scans)
        total = self.raw_spectrum().astype(np.float64)
        for _ in range(scans - 1):
            total += self.raw_spectrum()
        return total / scans

    def _instrument_averages(self, scans: int) -> bool:
        """Whether the instrument now averages `scans` itself; sets it when needed. Without that, make
        sure it sends single scans (it may still hold an earlier count)."""
        same_connection = self._averaging_open == self.transport.stats.opens
        if same_connection and self.averaging_supported is False:
            return False
        if same_connection and self.averaging_supported and self.scans_to_average == scans:
            return True
        if self.set_scans_to_average(scans):
            return True
        if self.averaging_supported and self.scans_to_average != 1 and not self.set_scans_to_average(1):
            raise DeviceNack(f"spectrometer on {self.transport.port} refused to go back to single scans")
        return False

    def health(self) -> Dict[str, Any]:
        """Link and driver counters for the station's health report."""
        figures = self.transport.health()
        figures.update(retried_requests=self.retried_requests, stale_replies=self.stale_replies)
        return figures

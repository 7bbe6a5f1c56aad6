"""An emulated OBP spectrometer on a pseudo-terminal, measuring the virtual lab's sample stage.

It answers the OBP messages the station's driver sends (serial number, wavelength coefficients,
integration time, trigger mode, scans to average, raw spectrum, baud rate, temperature) as an InGaAs instrument
would (900-1700 nm, 256 pixels, 16-bit counts by default), with counts from the virtual lab's
`scan_counts` of whatever `SampleStage.current()` holds. The physics is the lab's; this module adds
only what an instrument and its cable add: the protocol, on-instrument averaging (a spectrum request
returns the mean of `scans to average` scans, rounded to the wire's uint16, as the STS does; with
`averaging=False` the firmware lacks it and NACKs both messages with error 2, unknown message type),
a lamp that ages, the time it all takes, and faults switched on by rate. Its one temperature sensor reads the
lab's `temperature_c` of what is on the stage (the room the sample is measured in; with
`temperature_sensor=False` the firmware has none and NACKs both temperature messages with error 2).

Time (`Server(pace=True)`, the default of `isic-station emulate spectrometer`): a request counts as
received when its last byte would have arrived on an 8N1 line at the instrument's baud rate (10 bits
per byte); a spectrum request then integrates for integration time x scans to average; the reply goes
out at the line's rate. A pty has no baud clock of its own, so without this a 576-byte spectrum would
arrive in microseconds instead of 50 ms at 115200 baud. `pace=False` (`--no-pace`) answers at once,
for tests that need raw speed.

Faults:

- `garbage`: random bytes before a reply (line noise);
- `checksum`: a reply with one checksum byte flipped;
- `drop`: no reply at all;
- `delay`: the reply comes `delay_s` later (after the driver's timeout, as a late reply);
- `nack`: a NACK with a retryable error number (3 bad checksum, 7 device not ready);
- `reopen`: instead of replying the line is closed, stays down for `reopen_s`, and a new pty opens
  (behind the same `--link` path when one is given: a USB adapter unplugged and plugged back in).

Each fault is drawn independently per request with the given probability, from a seeded generator.
"""

import dataclasses
import errno
import logging
import os
import select
import time
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from isic_common.errors import ConfigError
from isic_drivers.emulators.pseudo_terminal import PseudoTerminal
from isic_drivers.lab.instrument import InstrumentModel
from isic_drivers.lab.measurement import scan_counts
from isic_drivers.lab.sample import Nuisance, Sample
from isic_drivers.lab.stage import SampleStage, StageContent
from isic_drivers.obp.codec import (
    DeviceRejected,
    Flag,
    Frame,
    InvalidPayload,
    MessageType,
    UnknownMessageType,
    encode_frame,
    pack_reply,
    unpack_request,
)
from isic_drivers.obp.scanner import FrameScanner
from isic_drivers.obp.transport import LINE_BITS_PER_BYTE, line_seconds

log = logging.getLogger(__name__)

FAULT_NAMES = ("garbage", "checksum", "drop", "delay", "nack", "reopen")
RETRYABLE_NACKS = (3, 7)
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
TRIGGER_MODES = range(0, 5)
SCANS_TO_AVERAGE = range(1, 0x10000)  # what the message's unsigned short holds; 0 is refused
AVERAGING_MESSAGES = (MessageType.GET_SCANS_TO_AVERAGE, MessageType.SET_SCANS_TO_AVERAGE)
TEMPERATURE_MESSAGES = (MessageType.GET_TEMPERATURE_COUNT, MessageType.GET_TEMPERATURE)
SPECTRUM_MESSAGES = (MessageType.GET_RAW_SPECTRUM,)
# Longest sleep between checks of `Server.stop()` while the instrument integrates or transmits.
STOP_CHECK_S = 0.1
# How long one blocking write to the pty may wait for the reader before the rest is dropped, as a
# serial line with nobody listening drops bytes (the emulator must never hang on a gone client).
WRITE_STALL_S = 0.5


@dataclass(frozen=True)
class FaultRates:
    """Probability per request of each fault (0 = off)."""

    garbage: float = 0.0
    checksum: float = 0.0
    drop: float = 0.0
    delay: float = 0.0
    nack: float = 0.0
    reopen: float = 0.0

    @classmethod
    def parse(cls, items: Sequence[str]) -> "FaultRates":
        """From `NAME=RATE` strings (e.g. `garbage=0.05`); ConfigError naming a bad item."""
        rates = {}
        for item in items:
            name, _, value = item.partition("=")
            if name not in FAULT_NAMES:
                raise ConfigError(f"--fault {item!r}: unknown fault {name!r}; expected one of {', '.join(FAULT_NAMES)}")
            try:
                rate = float(value)
            except ValueError:
                raise ConfigError(f"--fault {item!r}: the rate must be a number in 0..1, e.g. {name}=0.05") from None
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"--fault {item!r}: the rate {rate} is outside 0..1")
            rates[name] = rate
        return cls(**rates)


def instrument_for(pixels: Optional[int], wavelength_range: Optional[Tuple[float, float]],
                   serial: Optional[str]) -> InstrumentModel:
    """The lab's default InGaAs instrument, or one with a linear axis over `wavelength_range` on `pixels`."""
    nominal = InstrumentModel()
    changes = {}
    if pixels is not None or wavelength_range is not None:
        count = pixels if pixels is not None else nominal.n_pixels
        if count < 2:
            raise ConfigError(f"--pixels {count}: an instrument needs at least 2 pixels")
        low, high = wavelength_range if wavelength_range is not None else (
            float(nominal.wavelengths_nm[0]), float(nominal.wavelengths_nm[-1]))
        if not 0 < low < high:
            raise ConfigError(f"--range {low} {high}: expected 0 < start < end (nm)")
        changes.update(n_pixels=count, wavelength_coeffs=(low, (high - low) / (count - 1)))
    if serial is not None:
        if not serial.isascii() or not 0 < len(serial) <= 32:
            raise ConfigError(f"--serial {serial!r}: expected 1 to 32 ASCII characters")
        changes["serial"] = serial
    return dataclasses.replace(nominal, **changes) if changes else nominal


class EmulatedSpectrometer:
    """The instrument's state and its answers to OBP requests (no I/O: `serve` does that)."""

    def __init__(self, stage: SampleStage, instrument: InstrumentModel, faults: FaultRates = FaultRates(),
                 seed: int = 0, baud: int = 115200, lamp_drift_per_h: float = 0.0, delay_s: float = 1.5,
                 clock: Callable[[], float] = time.monotonic, averaging: bool = True,
                 overrides: Optional[Mapping[str, float]] = None, temperature_sensor: bool = True) -> None:
        """`overrides` pins Nuisance fields (e.g. wavelength_shift_nm) for every scan, reference tiles included."""
        self.stage = stage
        self.overrides = dict(overrides or {})
        self.instrument = instrument
        self.faults = faults
        self.baud = baud
        self.lamp_drift_per_h = lamp_drift_per_h
        self.delay_s = delay_s
        self.integration_us = instrument.default_integration_us
        self.trigger_mode = 0
        self.averaging = averaging
        self.temperature_sensor = temperature_sensor
        self.scans_to_average = 1
        self.requests = 0
        self._clock = clock
        self._started = clock()
        self._rng = np.random.default_rng(seed)

    def lamp_factor(self) -> float:
        """Lamp output relative to when the emulator started (ageing at `lamp_drift_per_h` per hour)."""
        hours = (self._clock() - self._started) / 3600.0
        return max(0.0, 1.0 - self.lamp_drift_per_h * hours)

    def _state(self) -> Tuple[StageContent, Nuisance]:
        """What is on the stage now and the conditions it is measured in (the overrides applied)."""
        target = self.stage.current()
        base = target.nuisance if isinstance(target, Sample) else Nuisance()
        return target, dataclasses.replace(base, **self.overrides)

    def scan(self) -> np.ndarray:
        """One raw scan of what is on the stage now, with the aged lamp."""
        target, state = self._state()
        state = dataclasses.replace(state, lamp_intensity=state.lamp_intensity * self.lamp_factor())
        return scan_counts(self.instrument, target, self.integration_us, self._rng, state)

    def averaged_scan(self) -> np.ndarray:
        """What one spectrum request returns: the mean of `scans_to_average` scans, as uint16 counts."""
        if self.scans_to_average == 1:
            return self.scan()
        total = np.zeros(self.instrument.n_pixels, dtype=np.float64)
        for _ in range(self.scans_to_average):
            total += self.scan()
        return np.clip(np.rint(total / self.scans_to_average), 0, 0xFFFF).astype(np.uint16)

    def busy_s(self, request: Frame) -> float:
        """How long the instrument works on `request` before its reply starts: a spectrum request
        integrates `scans_to_average` times; every other message is answered at once."""
        if request.message_type in SPECTRUM_MESSAGES:
            return self.integration_us * self.scans_to_average / 1e6
        return 0.0

    def answer(self, request: Frame) -> Frame:
        """The fault-free reply to `request`: data, an ACK, or a NACK with the OBP error number."""
        try:
            payload = self._payload(request)
        except DeviceRejected as exc:
            log.info("NACK %s to 0x%08x: %s", exc.error_number, request.message_type, exc)
            return Frame(request.message_type, flags=Flag.RESPONSE | Flag.NACK, error_number=exc.error_number,
                         regarding=request.regarding)
        flags = Flag.RESPONSE | (Flag.ACK if request.ack_requested else 0)
        return Frame(request.message_type, payload, flags=flags, regarding=request.regarding)

    def _payload(self, request: Frame) -> bytes:
        kind = request.message_type
        if kind in AVERAGING_MESSAGES and not self.averaging:
            raise UnknownMessageType(f"this firmware has no scans to average (0x{kind:08x})", error_number=2,
                                     message_type=kind)
        if kind in TEMPERATURE_MESSAGES and not self.temperature_sensor:
            raise UnknownMessageType(f"this firmware has no temperature sensor (0x{kind:08x})", error_number=2,
                                     message_type=kind)
        values = unpack_request(kind, request.payload)
        if kind == MessageType.GET_SERIAL_NUMBER:
            return self.instrument.serial.encode("ascii")
        if kind == MessageType.GET_SERIAL_NUMBER_LENGTH:
            return pack_reply(kind, len(self.instrument.serial))
        if kind == MessageType.GET_BAUD_RATE:
            return pack_reply(kind, self.baud)
        if kind == MessageType.SET_BAUD_RATE:
            self.baud = int(_check(values[0], BAUD_RATES, "baud rate"))
            return b""
        if kind == MessageType.GET_RAW_SPECTRUM:
            return self.averaged_scan().astype("<u2").tobytes()
        if kind == MessageType.GET_SCANS_TO_AVERAGE:
            return pack_reply(kind, self.scans_to_average)
        if kind == MessageType.SET_SCANS_TO_AVERAGE:
            self.scans_to_average = int(_check(values[0], SCANS_TO_AVERAGE, "scans to average"))
            return b""
        if kind == MessageType.GET_INTEGRATION_TIME:
            return pack_reply(kind, self.integration_us)
        if kind == MessageType.SET_INTEGRATION_TIME:
            limits = range(self.instrument.min_integration_us, self.instrument.max_integration_us + 1)
            self.integration_us = int(_check(values[0], limits, "integration time (us)"))
            return b""
        if kind == MessageType.SET_TRIGGER_MODE:
            self.trigger_mode = int(_check(values[0], TRIGGER_MODES, "trigger mode"))
            return b""
        if kind == MessageType.GET_WAVELENGTH_COEFFICIENT_COUNT:
            return pack_reply(kind, len(self.instrument.wavelength_coeffs))
        if kind == MessageType.GET_WAVELENGTH_COEFFICIENT:
            index = int(_check(values[0], range(len(self.instrument.wavelength_coeffs)), "coefficient index"))
            return pack_reply(kind, self.instrument.wavelength_coeffs[index])
        if kind == MessageType.GET_TEMPERATURE_COUNT:
            return pack_reply(kind, 1)
        if kind == MessageType.GET_TEMPERATURE:
            _check(values[0], range(1), "temperature sensor index")
            return pack_reply(kind, self._state()[1].temperature_c)
        raise UnknownMessageType(f"message type 0x{kind:08x} is not implemented", error_number=2, message_type=kind)

    def reply_to(self, request: Frame) -> "Reply":
        """What goes back on the line for `request`, faults included (`busy_s` and `baud` as the
        request found the instrument: a new baud rate applies after its ACK)."""
        self.requests += 1
        busy_s, baud = self.busy_s(request), self.baud
        faults, rng = self.faults, self._rng
        if rng.random() < faults.reopen:
            return Reply(reopen=True)
        if rng.random() < faults.drop:
            return Reply(busy_s=busy_s, baud=baud)
        if rng.random() < faults.nack:
            reply = Frame(request.message_type, flags=Flag.RESPONSE | Flag.NACK,
                          error_number=int(rng.choice(RETRYABLE_NACKS)), regarding=request.regarding)
        else:
            reply = self.answer(request)
        data = bytearray(encode_frame(reply))
        if rng.random() < faults.checksum:
            data[-5 - int(rng.integers(0, 16))] ^= 0xFF
        if rng.random() < faults.garbage:
            data[:0] = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
        delay = self.delay_s if rng.random() < faults.delay else 0.0
        return Reply(bytes(data), delay, busy_s=busy_s, baud=baud)


@dataclass(frozen=True)
class Reply:
    """Bytes to send after `delay_s` (a fault) or, paced, after `busy_s` (integration) at `baud`; or a
    line to close and reopen."""

    data: bytes = b""
    delay_s: float = 0.0
    reopen: bool = False
    busy_s: float = 0.0
    baud: int = 115200


def _check(value: float, allowed: Sequence[int], what: str) -> float:
    if value not in allowed:
        raise InvalidPayload(f"{what} {value} is not supported", error_number=6)
    return value


class Server:
    """Serves an EmulatedSpectrometer on a PseudoTerminal until `stop()`.

    With `pace` the line has the instrument's baud clock (see the module docstring); the instrument
    handles one request at a time, as a serial device does. Delayed replies wait in a queue so other
    requests are still served meanwhile; a reopen drops them (they were on the line that went away).
    """

    def __init__(self, device: EmulatedSpectrometer, line: PseudoTerminal, reopen_s: float = 0.5,
                 pace: bool = True) -> None:
        self.device = device
        self.line = line
        self.reopen_s = reopen_s
        self.pace = pace
        self.reopens = 0
        self._scanner = FrameScanner()
        self._pending: List[Tuple[float, bytes, int]] = []
        self._running = True

    def stop(self) -> None:
        """Ask `serve` to return (safe from a signal handler)."""
        self._running = False

    def serve(self) -> None:
        """Answer requests until stopped."""
        os.set_blocking(self.line.master_fd, False)
        while self._running:
            now = time.monotonic()
            due = [(data, baud) for when, data, baud in self._pending if when <= now]
            self._pending = [entry for entry in self._pending if entry[0] > now]
            for data, baud in due:
                self._write(data, baud)
            wait = min([0.1] + [when - now for when, _, _ in self._pending])
            try:
                ready, _, _ = select.select([self.line.master_fd], [], [], max(0.0, wait))
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                chunk = os.read(self.line.master_fd, 65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # no client has the slave open: wait for one
                    time.sleep(0.05)
                    continue
                raise
            arrived = time.monotonic()
            self._scanner.feed(chunk)
            for request in self._scanner.frames():
                # paced: the request is complete once its bytes would have crossed the line
                arrived += line_seconds(len(encode_frame(request)), self.device.baud) if self.pace else 0.0
                arrived = self._handle(request, arrived)

    def _handle(self, request: Frame, received_at: float) -> float:
        """Answer one request; returns when the line is free again (the reply's last byte)."""
        reply = self.device.reply_to(request)
        if reply.reopen:
            self._reopen()
        elif reply.delay_s:
            self._pending.append((time.monotonic() + reply.delay_s, reply.data, reply.baud))
        elif reply.data:
            if self.pace:
                self._sleep_until(received_at + reply.busy_s)
            self._write(reply.data, reply.baud)
        return time.monotonic()

    def _sleep_until(self, moment: float) -> None:
        while self._running:
            left = moment - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, STOP_CHECK_S))

    def _reopen(self) -> None:
        log.info("fault: closing the line for %.2f s", self.reopen_s)
        self.line.close()
        self._pending.clear()
        self._scanner = FrameScanner()
        time.sleep(self.reopen_s)
        self.line.open()
        os.set_blocking(self.line.master_fd, False)
        self.reopens += 1

    def _write(self, data: bytes, baud: int) -> None:
        """Send `data`; paced, in pieces of about a millisecond of line time, each when its last byte
        would have left the wire."""
        if not self.pace:
            self._write_now(memoryview(data))
            return
        piece = max(1, baud // (LINE_BITS_PER_BYTE * 1000))
        started = time.monotonic()
        for offset in range(0, len(data), piece):
            end = min(offset + piece, len(data))
            self._sleep_until(started + line_seconds(end, baud))
            if not self._write_now(memoryview(data)[offset:end]):
                return

    def _write_now(self, view: memoryview) -> bool:
        """Write all of `view`; False (bytes dropped) when nobody has read the line for WRITE_STALL_S."""
        deadline = time.monotonic() + WRITE_STALL_S
        while view:
            _, writable, _ = select.select([], [self.line.master_fd], [], max(0.0, deadline - time.monotonic()))
            if not writable:
                log.warning("nobody reads the line: %d reply bytes dropped", len(view))
                return False
            try:
                view = view[os.write(self.line.master_fd, view):]
            except BlockingIOError:
                continue
        return True

"""OBP frame format: encode and decode one frame, the message types and their payload layouts, and
the device's error numbers as exception classes.

Byte-exact with python-seabreeze's `seabreeze.pyseabreeze.protocol.OBPProtocol` (the tests check both
directions). seabreeze cannot be the codec on the board: it carries OBP only over USB (pyusb), raises
its own SeaBreezeError for every failure and ignores checksum mismatches, so the frame layout is
written out here (a 44-byte struct, MD5, a footer) and its error table is copied and checked against
seabreeze's by a test.

Frame: header `<HHHHLL6sBB16sL` (start 0xC0C1, version 0x1100, flags, error number, message type,
regarding, reserved, checksum type, immediate length, immediate data, bytes remaining), then the
payload when it is longer than 16 bytes, a 16-byte checksum (MD5 of every byte before it, or zeros
for checksum type 0) and the footer 0xC2C3C4C5.
"""

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Type, Union

from isic_common.errors import DeviceError

START_BYTES = 0xC0C1
START_ON_WIRE = b"\xc1\xc0"
PROTOCOL_VERSION = 0x1100
FOOTER = 0xC2C3C4C5
FOOTER_ON_WIRE = struct.pack("<L", FOOTER)

HEADER = struct.Struct("<HHHHLL6sBB16sL")
HEADER_SIZE = HEADER.size  # 44
CHECKSUM_SIZE = 16
TRAILER_SIZE = CHECKSUM_SIZE + len(FOOTER_ON_WIRE)  # 20: what "bytes remaining" counts besides the payload
MIN_FRAME_SIZE = HEADER_SIZE + TRAILER_SIZE  # 64
IMMEDIATE_SIZE = 16
# Longest payload accepted from the line. A header whose length field was hit by noise must not make
# the reader wait for megabytes before it can tell; 64 KiB holds a 32768-pixel uint16 spectrum.
DEFAULT_MAX_PAYLOAD = 64 * 1024

CHECKSUM_NONE = 0
CHECKSUM_MD5 = 1


class Flag(enum.IntFlag):
    """Header flag bits."""

    RESPONSE = 0x01
    ACK = 0x02
    ACK_REQUESTED = 0x04
    NACK = 0x08
    HARDWARE_EXCEPTION = 0x10
    PROTOCOL_DEPRECATED = 0x20


class MessageType(enum.IntEnum):
    """The OBP message types this station uses (codes from seabreeze and libseabreeze OBPMessageTypes.h).

    Scans to average: libseabreeze's OBPMessageTypes.h (python-seabreeze, src/libseabreeze/include/vendors/
    OceanOptics/protocols/obp/constants/OBPMessageTypes.h, "Spectrum filtering and averaging":
    OBP_GET_SCANS_TO_AVERAGE 0x00120000, OBP_SET_SCANS_TO_AVERAGE 0x00120010), payload an unsigned short
    both ways (OBPSetScansToAverageExchange.cpp, OBPSpectrumProcessingProtocol.cpp); the STS and Spark
    offer it. pyseabreeze's own OBPProtocol does not list these two (its spectrum-processing feature is
    not implemented), so their bytes are checked against its generic frame encoder.

    Temperature: the same header ("Temperature control and sensing": OBP_GET_TEMPERATURE_COUNT 0x00400000,
    OBP_GET_TEMPERATURE 0x00400001); libseabreeze's OBPTemperatureProtocol.cpp reads the count as one byte
    and a sensor's reading, asked by a one-byte index, as a little-endian float32 in degrees Celsius.
    pyseabreeze leaves its temperature feature unimplemented.
    """

    GET_SERIAL_NUMBER = 0x00000100
    GET_SERIAL_NUMBER_LENGTH = 0x00000101
    GET_BAUD_RATE = 0x00000800
    SET_BAUD_RATE = 0x00000810
    GET_CORRECTED_SPECTRUM = 0x00101000
    GET_RAW_SPECTRUM = 0x00101100
    GET_INTEGRATION_TIME = 0x00110000
    SET_INTEGRATION_TIME = 0x00110010
    SET_TRIGGER_MODE = 0x00110110
    GET_SCANS_TO_AVERAGE = 0x00120000
    SET_SCANS_TO_AVERAGE = 0x00120010
    GET_WAVELENGTH_COEFFICIENT_COUNT = 0x00180100
    GET_WAVELENGTH_COEFFICIENT = 0x00180101
    GET_TEMPERATURE_COUNT = 0x00400000
    GET_TEMPERATURE = 0x00400001


# Fixed payload layouts (struct formats); types absent here carry no payload in the request, or
# a variable one in the reply (serial number: ASCII; spectra: uint16 little-endian per pixel).
REQUEST_LAYOUT: Dict[int, struct.Struct] = {
    MessageType.SET_BAUD_RATE: struct.Struct("<L"),
    MessageType.SET_INTEGRATION_TIME: struct.Struct("<L"),
    MessageType.SET_TRIGGER_MODE: struct.Struct("<B"),
    MessageType.SET_SCANS_TO_AVERAGE: struct.Struct("<H"),
    MessageType.GET_WAVELENGTH_COEFFICIENT: struct.Struct("<B"),
    MessageType.GET_TEMPERATURE: struct.Struct("<B"),
}
REPLY_LAYOUT: Dict[int, struct.Struct] = {
    MessageType.GET_SERIAL_NUMBER_LENGTH: struct.Struct("<B"),
    MessageType.GET_BAUD_RATE: struct.Struct("<L"),
    MessageType.GET_INTEGRATION_TIME: struct.Struct("<L"),
    MessageType.GET_SCANS_TO_AVERAGE: struct.Struct("<H"),
    MessageType.GET_WAVELENGTH_COEFFICIENT_COUNT: struct.Struct("<B"),
    MessageType.GET_WAVELENGTH_COEFFICIENT: struct.Struct("<f"),
    MessageType.GET_TEMPERATURE_COUNT: struct.Struct("<B"),
    MessageType.GET_TEMPERATURE: struct.Struct("<f"),
}

Number = Union[int, float]


def pack_request(message_type: int, *values: Number) -> bytes:
    """The request payload of `message_type` (empty for types that take none)."""
    layout = REQUEST_LAYOUT.get(message_type)
    return layout.pack(*values) if layout is not None else b""


def unpack_request(message_type: int, payload: bytes) -> Tuple[Number, ...]:
    """The values in a request payload; raises PayloadLengthMismatch when it has the wrong size."""
    return _unpack(REQUEST_LAYOUT, message_type, payload)


def pack_reply(message_type: int, *values: Number) -> bytes:
    """The reply payload of a fixed-layout `message_type`."""
    return REPLY_LAYOUT[message_type].pack(*values)


def unpack_reply(message_type: int, payload: bytes) -> Tuple[Number, ...]:
    """The values in a fixed-layout reply payload; raises PayloadLengthMismatch on a wrong size."""
    return _unpack(REPLY_LAYOUT, message_type, payload)


def _unpack(layouts: Dict[int, struct.Struct], message_type: int, payload: bytes) -> Tuple[Number, ...]:
    layout = layouts.get(message_type)
    if layout is None:
        return ()
    if len(payload) != layout.size:
        raise PayloadLengthMismatch(
            f"message 0x{message_type:08x} carries {len(payload)} payload bytes, expected {layout.size}",
            message_type=message_type,
        )
    return layout.unpack(payload)


# ---------------------------------------------------------------------------------------------
# Errors


class ObpError(DeviceError):
    """Base of every error of the OBP layer (frame, device, line); a DeviceError for the station."""


class FrameError(ObpError):
    """These bytes are not a valid OBP frame (start bytes, version, lengths, footer)."""


class ChecksumMismatch(FrameError):
    """The frame's MD5 does not match its bytes, or a checksum-type-0 frame has a non-zero checksum."""


class DeviceRejected(ObpError):
    """The instrument answered with an error number, a NACK or a hardware exception.

    `error_number`, `message_type` and `flags` are those of the reply. `retryable` says whether the
    same request may succeed when sent again (a corrupted request, a busy device).
    """

    retryable = False

    def __init__(self, message: str, error_number: int = 0, message_type: int = 0, flags: int = 0) -> None:
        super().__init__(message)
        self.error_number = error_number
        self.message_type = message_type
        self.flags = flags


class UnsupportedProtocol(DeviceRejected):
    """Error 1: the instrument does not speak this protocol version."""


class UnknownMessageType(DeviceRejected):
    """Error 2: the instrument does not implement this message type."""


class RequestChecksumRejected(DeviceRejected):
    """Error 3: the instrument received our request with a bad checksum (line noise): send it again."""

    retryable = True


class MessageTooLarge(DeviceRejected):
    """Error 4: the request is longer than the instrument accepts."""


class PayloadLengthMismatch(DeviceRejected):
    """Error 5: the payload length does not match the message type (also raised locally on replies)."""

    def __init__(self, message: str, error_number: int = 5, message_type: int = 0, flags: int = 0) -> None:
        super().__init__(message, error_number, message_type, flags)


class InvalidPayload(DeviceRejected):
    """Error 6: the payload's value is out of range for the instrument (an integration time, an index)."""


class DeviceNotReady(DeviceRejected):
    """Error 7: the instrument is busy with something else: send it again."""

    retryable = True


class UnknownChecksumType(DeviceRejected):
    """Error 8: the instrument does not know the request's checksum type."""


class DeviceResetUnexpectedly(DeviceRejected):
    """Error 9: the instrument restarted; its settings (integration time, trigger) are back to defaults."""


class TooManyBuses(DeviceRejected):
    """Error 10: commands came over too many interfaces at once."""


class DeviceOutOfMemory(DeviceRejected):
    """Error 11: the instrument could not allocate memory for the request."""


class InformationMissing(DeviceRejected):
    """Error 12: the command is valid but the instrument holds no such information."""


class InternalDeviceError(DeviceRejected):
    """Error 13: an internal instrument error, maybe unrecoverable: power-cycle it."""


class FirmwareUpdateError(DeviceRejected):
    """Errors 100-104: a firmware upload was refused (decryption, layout, packet size, revision, flash map)."""


class ResponseDeferred(DeviceRejected):
    """Error 255: the operation takes longer; the reply comes later."""

    retryable = True


class HardwareException(DeviceRejected):
    """The reply carries the hardware-exception flag without an error number."""


class DeviceNack(DeviceRejected):
    """The reply carries NACK without an error number the table knows."""


# The instrument's error numbers and their meaning, as in seabreeze's `_OBP.ERROR_CODES`
# (tests/obp checks that the two tables agree).
ERROR_TABLE: Dict[int, Tuple[str, Type[DeviceRejected]]] = {
    1: ("Invalid/unsupported protocol", UnsupportedProtocol),
    2: ("Unknown message type", UnknownMessageType),
    3: ("Bad checksum", RequestChecksumRejected),
    4: ("Message too large", MessageTooLarge),
    5: ("Payload length does not match message type", PayloadLengthMismatch),
    6: ("Payload data invalid", InvalidPayload),
    7: ("Device not ready for given message type", DeviceNotReady),
    8: ("Unknown checksum type", UnknownChecksumType),
    9: ("Device reset unexpectedly", DeviceResetUnexpectedly),
    10: ("Too many buses (Commands have come from too many bus interfaces)", TooManyBuses),
    11: ("Out of memory. Failed to allocate enough space to complete request.", DeviceOutOfMemory),
    12: ("Command is valid, but desired information does not exist.", InformationMissing),
    13: ("Int Device Error. May be unrecoverable.", InternalDeviceError),
    100: ("Could not decrypt properly", FirmwareUpdateError),
    101: ("Firmware layout invalid", FirmwareUpdateError),
    102: ("Data packet was wrong size", FirmwareUpdateError),
    103: ("hardware revision not compatible with firmware", FirmwareUpdateError),
    104: ("Existing flash map not compatible with firmware", FirmwareUpdateError),
    255: ("Operation/Response Deferred. Will take some time. Do not ACK or NACK yet.", ResponseDeferred),
}


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class Frame:
    """One OBP message. `payload` is the message's data, whether it travels as immediate data or not."""

    message_type: int
    payload: bytes = b""
    flags: int = 0
    error_number: int = 0
    regarding: int = 0
    checksum_type: int = CHECKSUM_MD5
    protocol_version: int = PROTOCOL_VERSION
    reserved: bytes = bytes(6)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def is_ack(self) -> bool:
        return bool(self.flags & Flag.ACK)

    @property
    def is_nack(self) -> bool:
        return bool(self.flags & Flag.NACK)

    @property
    def ack_requested(self) -> bool:
        return bool(self.flags & Flag.ACK_REQUESTED)

    @property
    def hardware_exception(self) -> bool:
        return bool(self.flags & Flag.HARDWARE_EXCEPTION)


def _describe_type(message_type: int) -> str:
    try:
        return f"{MessageType(message_type).name} (0x{message_type:08x})"
    except ValueError:
        return f"0x{message_type:08x}"


def device_error(frame: Frame) -> Optional[DeviceRejected]:
    """The exception a reply stands for (its error number, NACK or hardware-exception flag), or None."""
    if frame.error_number == 0 and not (frame.flags & (Flag.NACK | Flag.HARDWARE_EXCEPTION)):
        return None
    what = _describe_type(frame.message_type)
    if frame.error_number in ERROR_TABLE:
        meaning, cls = ERROR_TABLE[frame.error_number]
        text = f"spectrometer rejected {what}: error {frame.error_number}: {meaning}"
    elif frame.error_number:
        cls = DeviceNack
        text = f"spectrometer rejected {what}: error {frame.error_number} (not in the OBP error table)"
    elif frame.hardware_exception:
        cls = HardwareException
        text = f"spectrometer reported a hardware exception on {what}"
    else:
        cls = DeviceNack
        text = f"spectrometer answered NACK to {what} without an error number"
    return cls(text, error_number=frame.error_number, message_type=frame.message_type, flags=frame.flags)


def checksum(data: bytes, checksum_type: int) -> bytes:
    """The 16 checksum bytes for everything before them: MD5, or zeros for checksum type 0."""
    if checksum_type == CHECKSUM_MD5:
        return hashlib.md5(data).digest()
    if checksum_type == CHECKSUM_NONE:
        return bytes(CHECKSUM_SIZE)
    raise ValueError(f"unknown OBP checksum type {checksum_type} (0 none, 1 MD5)")


def encode_frame(frame: Frame) -> bytes:
    """The bytes of `frame` on the wire; payloads of up to 16 bytes travel as immediate data."""
    immediate = len(frame.payload) <= IMMEDIATE_SIZE
    body = b"" if immediate else frame.payload
    header = HEADER.pack(
        START_BYTES,
        frame.protocol_version,
        frame.flags,
        frame.error_number,
        frame.message_type,
        frame.regarding,
        frame.reserved,
        frame.checksum_type,
        len(frame.payload) if immediate else 0,
        frame.payload if immediate else b"",
        len(body) + TRAILER_SIZE,
    )
    data = header + body
    return data + checksum(data, frame.checksum_type) + FOOTER_ON_WIRE


def frame_length(header: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> int:
    """The whole frame's length announced by a 44-byte header; FrameError if the header cannot be one.

    Checked here, before the rest arrives: start bytes, version, checksum type, immediate length, and
    that "bytes remaining" is at least 20, at most `max_payload` + 20, and exactly 20 when the
    header carries immediate data.
    """
    if len(header) < HEADER_SIZE:
        raise FrameError(f"OBP header needs {HEADER_SIZE} bytes, got {len(header)}")
    start, version, _f, _e, _t, _r, _res, checksum_type, immediate_length, _i, remaining = HEADER.unpack_from(header)
    if start != START_BYTES:
        raise FrameError(f"OBP start bytes are 0x{start:04x}, expected 0x{START_BYTES:04x}")
    if version != PROTOCOL_VERSION:
        raise FrameError(f"OBP protocol version is 0x{version:04x}, expected 0x{PROTOCOL_VERSION:04x}")
    if checksum_type not in (CHECKSUM_NONE, CHECKSUM_MD5):
        raise FrameError(f"OBP checksum type is {checksum_type}, expected 0 (none) or 1 (MD5)")
    if immediate_length > IMMEDIATE_SIZE:
        raise FrameError(f"OBP immediate length is {immediate_length}, at most {IMMEDIATE_SIZE}")
    if remaining < TRAILER_SIZE or remaining > max_payload + TRAILER_SIZE:
        raise FrameError(
            f"OBP bytes-remaining is {remaining}, expected {TRAILER_SIZE}..{max_payload + TRAILER_SIZE}"
        )
    if immediate_length and remaining != TRAILER_SIZE:
        raise FrameError(f"OBP frame has both {immediate_length} immediate bytes and a payload")
    return HEADER_SIZE + remaining


def decode_frame(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """The frame in `data`, which must be exactly one frame; FrameError/ChecksumMismatch otherwise."""
    expected = frame_length(data, max_payload)
    if len(data) != expected:
        raise FrameError(f"OBP frame announces {expected} bytes, got {len(data)}")
    if data[-len(FOOTER_ON_WIRE):] != FOOTER_ON_WIRE:
        raise FrameError(f"OBP footer is {data[-4:].hex()}, expected {FOOTER_ON_WIRE.hex()}")
    (_s, version, flags, error_number, message_type, regarding, reserved, checksum_type, immediate_length,
     immediate, _rem) = HEADER.unpack_from(data)
    covered = data[:-TRAILER_SIZE]
    received = data[-TRAILER_SIZE:-len(FOOTER_ON_WIRE)]
    if received != checksum(covered, checksum_type):
        raise ChecksumMismatch(
            f"OBP checksum mismatch on message 0x{message_type:08x} (checksum type {checksum_type})"
        )
    payload = immediate[:immediate_length] if immediate_length else data[HEADER_SIZE:-TRAILER_SIZE]
    return Frame(
        message_type=message_type,
        payload=bytes(payload),
        flags=flags,
        error_number=error_number,
        regarding=regarding,
        checksum_type=checksum_type,
        protocol_version=version,
        reserved=reserved,
    )

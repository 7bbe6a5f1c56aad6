"""OBP frame codec: round trips of every message type, flags, checksum types, error numbers -> exceptions."""

import hashlib
import struct

import pytest

from isic_common.errors import DeviceError
from isic_drivers.obp import codec
from isic_drivers.obp.codec import Flag, Frame, MessageType, decode_frame, encode_frame

# A representative request and reply payload per message type (spectra take the payload path).
SAMPLE_PAYLOADS = {
    MessageType.GET_SERIAL_NUMBER: (b"", b"ISIC-EMU-0001"),
    MessageType.GET_SERIAL_NUMBER_LENGTH: (b"", codec.pack_reply(MessageType.GET_SERIAL_NUMBER_LENGTH, 13)),
    MessageType.GET_BAUD_RATE: (b"", codec.pack_reply(MessageType.GET_BAUD_RATE, 921600)),
    MessageType.SET_BAUD_RATE: (codec.pack_request(MessageType.SET_BAUD_RATE, 115200), b""),
    MessageType.GET_CORRECTED_SPECTRUM: (b"", struct.pack("<256H", *range(0, 65536, 256))),
    MessageType.GET_RAW_SPECTRUM: (b"", struct.pack("<256H", *range(65535, 0, -256))),
    MessageType.GET_INTEGRATION_TIME: (b"", codec.pack_reply(MessageType.GET_INTEGRATION_TIME, 85_000_000)),
    MessageType.SET_INTEGRATION_TIME: (codec.pack_request(MessageType.SET_INTEGRATION_TIME, 10), b""),
    MessageType.SET_TRIGGER_MODE: (codec.pack_request(MessageType.SET_TRIGGER_MODE, 3), b""),
    MessageType.GET_SCANS_TO_AVERAGE: (b"", codec.pack_reply(MessageType.GET_SCANS_TO_AVERAGE, 16)),
    MessageType.SET_SCANS_TO_AVERAGE: (codec.pack_request(MessageType.SET_SCANS_TO_AVERAGE, 16), b""),
    MessageType.GET_WAVELENGTH_COEFFICIENT_COUNT: (
        b"", codec.pack_reply(MessageType.GET_WAVELENGTH_COEFFICIENT_COUNT, 4)),
    MessageType.GET_WAVELENGTH_COEFFICIENT: (
        codec.pack_request(MessageType.GET_WAVELENGTH_COEFFICIENT, 2),
        codec.pack_reply(MessageType.GET_WAVELENGTH_COEFFICIENT, -1.25e-4)),
    MessageType.GET_TEMPERATURE_COUNT: (b"", codec.pack_reply(MessageType.GET_TEMPERATURE_COUNT, 3)),
    MessageType.GET_TEMPERATURE: (codec.pack_request(MessageType.GET_TEMPERATURE, 0),
                                  codec.pack_reply(MessageType.GET_TEMPERATURE, 31.5)),
}


def test_every_message_type_has_sample_payloads():
    assert set(SAMPLE_PAYLOADS) == set(MessageType)


@pytest.mark.parametrize("message_type", list(MessageType), ids=lambda t: t.name)
@pytest.mark.parametrize("checksum_type", [codec.CHECKSUM_NONE, codec.CHECKSUM_MD5])
def test_request_and_reply_round_trip(message_type, checksum_type):
    request_payload, reply_payload = SAMPLE_PAYLOADS[message_type]
    request = Frame(message_type, request_payload, flags=Flag.ACK_REQUESTED, regarding=0xDEADBEEF,
                    checksum_type=checksum_type)
    reply = Frame(message_type, reply_payload, flags=Flag.RESPONSE | Flag.ACK, regarding=0xDEADBEEF,
                  checksum_type=checksum_type)
    for frame in (request, reply):
        wire = encode_frame(frame)
        assert decode_frame(wire) == frame
        assert wire[:2] == b"\xc1\xc0" and wire[-4:] == b"\xc5\xc4\xc3\xc2"
        assert len(wire) == 64 + (len(frame.payload) if len(frame.payload) > 16 else 0)


def test_header_layout_and_md5():
    payload = bytes(range(40))
    wire = encode_frame(Frame(0x00101100, payload, flags=Flag.RESPONSE, error_number=0, regarding=7))
    fields = struct.unpack_from("<HHHHLL6sBB16sL", wire)
    assert fields == (0xC0C1, 0x1100, 0x01, 0, 0x00101100, 7, bytes(6), 1, 0, bytes(16), 40 + 20)
    assert wire[44:84] == payload
    assert wire[84:100] == hashlib.md5(wire[:84]).digest()
    assert struct.unpack("<L", wire[100:]) == (0xC2C3C4C5,)


def test_immediate_data_up_to_16_bytes():
    wire = encode_frame(Frame(0x100, b"0123456789abcdef"))
    assert len(wire) == 64 and wire[23] == 16 and wire[24:40] == b"0123456789abcdef"
    wire = encode_frame(Frame(0x100, b"0123456789abcdefg"))
    assert len(wire) == 81 and wire[23] == 0 and wire[44:61] == b"0123456789abcdefg"


def test_checksum_type_none_has_zero_checksum_and_rejects_other_bytes():
    wire = bytearray(encode_frame(Frame(0x100, b"abc", checksum_type=codec.CHECKSUM_NONE)))
    assert wire[44:60] == bytes(16)
    wire[50] = 1
    with pytest.raises(codec.ChecksumMismatch):
        decode_frame(bytes(wire))


@pytest.mark.parametrize("offset", [0, 2, 22, 23, 40, 45, 60, 63])
def test_corruption_is_a_frame_error(offset):
    wire = bytearray(encode_frame(Frame(0x100, b"abc")))
    wire[offset] ^= 0x40
    with pytest.raises(codec.FrameError):
        decode_frame(bytes(wire))


def test_wrong_length_and_oversized_payload():
    wire = encode_frame(Frame(0x00101100, bytes(600)))
    with pytest.raises(codec.FrameError, match="announces"):
        decode_frame(wire[:-1])
    with pytest.raises(codec.FrameError, match="bytes-remaining"):
        decode_frame(wire, max_payload=512)


def test_flags():
    frame = Frame(0x100, flags=Flag.RESPONSE | Flag.NACK | Flag.HARDWARE_EXCEPTION)
    assert frame.is_response and frame.is_nack and frame.hardware_exception
    assert not frame.is_ack and not frame.ack_requested
    assert Frame(0x100, flags=Flag.ACK | Flag.ACK_REQUESTED).is_ack


@pytest.mark.parametrize("number", sorted(codec.ERROR_TABLE))
def test_error_numbers_map_to_their_exception(number):
    meaning, cls = codec.ERROR_TABLE[number]
    reply = Frame(MessageType.SET_INTEGRATION_TIME, flags=Flag.RESPONSE | Flag.NACK, error_number=number)
    error = codec.device_error(decode_frame(encode_frame(reply)))
    assert type(error) is cls
    assert isinstance(error, codec.ObpError) and isinstance(error, DeviceError)
    assert error.error_number == number and meaning in str(error) and "SET_INTEGRATION_TIME" in str(error)


def test_nack_without_number_hardware_exception_and_success():
    assert codec.device_error(Frame(0x100, flags=Flag.RESPONSE)) is None
    assert type(codec.device_error(Frame(0x100, flags=Flag.NACK))) is codec.DeviceNack
    assert type(codec.device_error(Frame(0x100, flags=Flag.HARDWARE_EXCEPTION))) is codec.HardwareException
    unknown = codec.device_error(Frame(0x100, flags=Flag.NACK, error_number=42))
    assert type(unknown) is codec.DeviceNack and "42" in str(unknown)


def test_retryable_errors():
    retryable = {number for number, (_m, cls) in codec.ERROR_TABLE.items() if cls.retryable}
    assert retryable == {3, 7, 255}


def test_payload_layouts():
    assert codec.unpack_request(MessageType.SET_INTEGRATION_TIME, b"\x10\x27\x00\x00") == (10000,)
    assert codec.unpack_reply(MessageType.GET_WAVELENGTH_COEFFICIENT, struct.pack("<f", 900.5)) == (900.5,)
    with pytest.raises(codec.PayloadLengthMismatch, match="carries 3 payload bytes, expected 4"):
        codec.unpack_request(MessageType.SET_INTEGRATION_TIME, b"\x00\x00\x00")
    assert codec.unpack_request(MessageType.GET_RAW_SPECTRUM, b"") == ()
    # scans to average: an unsigned short both ways (libseabreeze's OBPSetScansToAverageExchange)
    assert codec.pack_request(MessageType.SET_SCANS_TO_AVERAGE, 16) == b"\x10\x00"
    assert codec.unpack_reply(MessageType.GET_SCANS_TO_AVERAGE, b"\x00\x01") == (256,)
    # temperature (libseabreeze OBPTemperatureProtocol.cpp): a one-byte count, a one-byte sensor index in,
    # a little-endian float32 in degrees Celsius out
    assert codec.unpack_reply(MessageType.GET_TEMPERATURE_COUNT, b"\x02") == (2,)
    assert codec.pack_request(MessageType.GET_TEMPERATURE, 1) == b"\x01"
    assert codec.unpack_reply(MessageType.GET_TEMPERATURE, b"\x00\x00\xc8\x41") == (25.0,)

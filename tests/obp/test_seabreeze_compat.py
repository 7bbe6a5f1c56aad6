"""Byte compatibility with python-seabreeze's own OBP implementation, in both directions.

seabreeze's `OBPProtocol` talks to a transport object; here that is `MemoryTransport`, a fake of
seabreeze's USB transport (no USB device exists here) that records what seabreeze writes and hands
it the bytes our codec produced, 64 bytes first as a USB packet would arrive.
"""

import struct
import warnings
from typing import List

import numpy as np
import pytest
from seabreeze.pyseabreeze.exceptions import SeaBreezeError
from seabreeze.pyseabreeze.protocol import _OBP, OBPProtocol
from seabreeze.pyseabreeze.types import PySeaBreezeTransport

from isic_drivers.obp import codec
from isic_drivers.obp.codec import Flag, Frame, MessageType, decode_frame, encode_frame


class MemoryTransport(PySeaBreezeTransport):
    """Fake seabreeze transport: `written` collects outgoing bytes; `incoming` is read back."""

    def __init__(self) -> None:
        self.written: List[bytes] = []
        self.incoming = b""

    def write(self, data, timeout_ms=None, **kwargs):
        self.written.append(bytes(data))
        return len(data)

    def read(self, size=None, timeout_ms=None, **kwargs):
        size = 64 if size is None else size
        chunk, self.incoming = self.incoming[:size], self.incoming[size:]
        return chunk

    # The rest of seabreeze's transport interface is not used by OBPProtocol.
    def open_device(self, device):
        raise NotImplementedError

    @property
    def is_open(self):
        return True

    def close_device(self):
        raise NotImplementedError

    @property
    def default_timeout_ms(self):
        return 1000

    @property
    def protocol(self):
        raise NotImplementedError

    @classmethod
    def list_devices(cls):
        return []

    @classmethod
    def register_model(cls, model_name, **kwargs):
        raise NotImplementedError

    @classmethod
    def supported_model(cls, device):
        return None

    @classmethod
    def specialize(cls, model_name, **kwargs):
        raise NotImplementedError


@pytest.fixture
def seabreeze():
    transport = MemoryTransport()
    protocol = OBPProtocol(transport)
    protocol.test_transport = transport  # keep the fake alive: seabreeze holds only a weak proxy
    return protocol


PAYLOADS = [b"", b"\x01", bytes(range(16)), bytes(range(17)), bytes(range(256)) * 2]


def test_error_table_is_seabreezes():
    assert {number: meaning for number, (meaning, _cls) in codec.ERROR_TABLE.items()} == {
        number: meaning for number, meaning in _OBP.ERROR_CODES.items() if number != 0
    }


def test_constants_are_seabreezes():
    assert codec.HEADER.format == _OBP.HEADER_FMT
    assert (codec.START_BYTES, codec.PROTOCOL_VERSION, codec.FOOTER) == (
        _OBP.HEADER_START_BYTES, _OBP.HEADER_PROTOCOL_VERSION, _OBP.FOOTER)
    assert [Flag.RESPONSE, Flag.ACK, Flag.ACK_REQUESTED, Flag.NACK, Flag.HARDWARE_EXCEPTION,
            Flag.PROTOCOL_DEPRECATED] == [
        _OBP.FLAG_RESPONSE_TO_REQUEST, _OBP.FLAG_ACK, _OBP.FLAG_REQUEST_ACK, _OBP.FLAG_NACK,
        _OBP.FLAG_HW_EXCEPTION, _OBP.FLAG_PROTOCOL_DEPRECATED]
    shared = set(OBPProtocol.msgs) & {int(t) for t in MessageType}
    assert shared >= {0x100, 0x101, 0x00101000, 0x00101100, 0x00110010, 0x00110110, 0x00180100, 0x00180101}


@pytest.mark.parametrize("message_type", list(MessageType), ids=lambda t: t.name)
@pytest.mark.parametrize("payload", PAYLOADS, ids=len)
@pytest.mark.parametrize("ack", [False, True])
def test_seabreeze_encodes_what_we_encode(seabreeze, message_type, payload, ack):
    """Same bytes from both encoders (seabreeze sends checksum type 0), and we decode seabreeze's."""
    theirs = seabreeze._construct_outgoing_message(message_type, payload, request_ack=ack, regarding=0x1234)
    frame = Frame(message_type, payload, flags=Flag.ACK_REQUESTED if ack else 0, regarding=0x1234,
                  checksum_type=codec.CHECKSUM_NONE)
    assert encode_frame(frame) == theirs
    assert decode_frame(theirs) == frame


@pytest.mark.parametrize("message_type, values", [
    (0x100, ()), (0x101, ()), (0x00101100, ()), (0x00110010, (250000,)), (0x00110110, (1,)),
    (0x00180100, ()), (0x00180101, (3,)),
])
def test_seabreeze_send_payload_layouts_match_ours(seabreeze, message_type, values):
    """What seabreeze's `send` puts on the wire for a request is what our driver's layouts pack."""
    seabreeze.send(message_type, values, request_ack=False)
    frame = decode_frame(seabreeze.test_transport.written[-1])
    assert frame.message_type == message_type
    assert frame.payload == codec.pack_request(message_type, *values)
    assert codec.unpack_request(message_type, frame.payload) == values


@pytest.mark.parametrize("message_type", list(MessageType), ids=lambda t: t.name)
@pytest.mark.parametrize("payload", PAYLOADS, ids=len)
@pytest.mark.parametrize("checksum_type", [codec.CHECKSUM_NONE, codec.CHECKSUM_MD5])
def test_seabreeze_decodes_what_we_encode(seabreeze, message_type, payload, checksum_type):
    """seabreeze's `receive` returns our reply's payload, and warns on no checksum mismatch (MD5 agrees)."""
    seabreeze.test_transport.incoming = encode_frame(
        Frame(message_type, payload, flags=Flag.RESPONSE, regarding=9, checksum_type=checksum_type))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seabreeze.receive() == payload
    assert seabreeze.test_transport.incoming == b""


def test_seabreeze_detects_our_checksum_when_corrupted(seabreeze):
    """The MD5 seabreeze checks is the one we write: a flipped payload byte makes it warn."""
    wire = bytearray(encode_frame(Frame(0x00101100, bytes(100), flags=Flag.RESPONSE)))
    wire[50] ^= 1
    seabreeze.test_transport.incoming = bytes(wire)
    with pytest.warns(UserWarning, match="checksums differ"):
        seabreeze.receive()


@pytest.mark.parametrize("number", sorted(codec.ERROR_TABLE))
def test_seabreeze_reads_our_nacks_as_we_do(seabreeze, number):
    wire = encode_frame(Frame(MessageType.GET_RAW_SPECTRUM, flags=Flag.RESPONSE | Flag.NACK, error_number=number))
    with pytest.raises(SeaBreezeError) as theirs:
        seabreeze._check_incoming_message_header(wire[:44])
    ours = codec.device_error(decode_frame(wire))
    assert str(theirs.value) in str(ours)
    assert isinstance(ours, codec.ERROR_TABLE[number][1])


def test_seabreeze_reads_our_header_fields(seabreeze):
    wire = encode_frame(Frame(0x00180101, struct.pack("<f", 1.5), flags=Flag.RESPONSE | Flag.ACK, regarding=77))
    fields = seabreeze._check_incoming_message_header(wire[:44], _raw=True)
    assert fields[2] == 0x03 and fields[4] == 0x00180101 and fields[5] == 77 and fields[7] == 1
    assert seabreeze._extract_message_data(wire) == struct.pack("<f", 1.5)


class EmulatorWire(MemoryTransport):
    """seabreeze's transport fake wired to our emulated instrument: each write is answered at once."""

    def __init__(self, device) -> None:
        super().__init__()
        self.device = device

    def write(self, data, timeout_ms=None, **kwargs):
        self.incoming += encode_frame(self.device.answer(decode_frame(bytes(data))))
        return super().write(data, timeout_ms, **kwargs)


def test_seabreeze_as_host_talks_to_our_emulated_instrument(tmp_path):
    """seabreeze's own send/query against the emulator's replies: serial, coefficients, ACKed settings, spectrum."""
    from isic_drivers.emulators.spectrometer import EmulatedSpectrometer, instrument_for
    from isic_drivers.lab.stage import SampleStage

    stage = SampleStage(tmp_path / "stage.json")
    stage.put_reference("white")
    device = EmulatedSpectrometer(stage, instrument_for(None, None, "SB-HOST-1"))
    wire = EmulatorWire(device)
    host = OBPProtocol(wire)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host.query(0x100) == b"SB-HOST-1"
        assert host.query(0x00180100) == bytes([len(device.instrument.wavelength_coeffs)])
        (c1,) = struct.unpack("<f", host.query(0x00180101, 1))
        assert c1 == pytest.approx(device.instrument.wavelength_coeffs[1], rel=1e-6)
        assert host.send(0x00110010, 5000, request_ack=True) > 0  # seabreeze reads our ACK
        assert device.integration_us == 5000
        assert host.send(0x00110010, 5, request_ack=True) == 0  # our NACK (error 6) is an error to seabreeze
        assert device.integration_us == 5000
        spectrum = host.query(0x00101100)
    assert len(spectrum) == 2 * device.instrument.n_pixels
    assert max(struct.unpack(f"<{device.instrument.n_pixels}H", spectrum)) > 10000


def test_scans_to_average_request_is_libseabreezes_unsigned_short(seabreeze):
    """libseabreeze's OBPSetScansToAverageExchange sends the count as an unsigned short; pyseabreeze's
    OBPProtocol does not list the message (its spectrum-processing feature is unimplemented), so its
    generic encoder is the reference for the frame, and its `msgs` table must agree should it add it."""
    for kind in (MessageType.GET_SCANS_TO_AVERAGE, MessageType.SET_SCANS_TO_AVERAGE):
        if kind in OBPProtocol.msgs:
            assert OBPProtocol.msgs[kind] == ("<H" if kind == MessageType.SET_SCANS_TO_AVERAGE else "")
    payload = struct.pack("<H", 16)
    theirs = seabreeze._construct_outgoing_message(0x00120010, payload, request_ack=True, regarding=5)
    ours = Frame(MessageType.SET_SCANS_TO_AVERAGE, codec.pack_request(MessageType.SET_SCANS_TO_AVERAGE, 16),
                 flags=Flag.ACK_REQUESTED, regarding=5, checksum_type=codec.CHECKSUM_NONE)
    assert encode_frame(ours) == theirs


@pytest.mark.parametrize("averaging", [True, False], ids=["firmware averages", "firmware without averaging"])
def test_seabreeze_sets_scans_to_average_on_our_emulated_instrument(tmp_path, averaging):
    """seabreeze's frames for scans to average: the emulator ACKs and averages, or NACKs as old firmware."""
    from isic_drivers.emulators.spectrometer import EmulatedSpectrometer, instrument_for
    from isic_drivers.lab.stage import SampleStage

    stage = SampleStage(tmp_path / "stage.json")
    stage.put_reference("white")
    device = EmulatedSpectrometer(stage, instrument_for(None, None, None), averaging=averaging)
    wire = EmulatorWire(device)
    host = OBPProtocol(wire)
    host.transport.write(host._construct_outgoing_message(0x00120010, struct.pack("<H", 16), request_ack=True))
    if not averaging:
        with pytest.raises(SeaBreezeError, match="Unknown message type"):
            host.receive()
        assert device.scans_to_average == 1
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert host.receive() == b""  # the ACK
        host.transport.write(host._construct_outgoing_message(0x00120000, b""))
        assert struct.unpack("<H", host.receive()) == (16,)
    assert device.scans_to_average == 16
    spectra = [np.frombuffer(host.query(0x00101100), "<u2").astype(float) for _ in range(2)]
    device.scans_to_average = 1
    singles = [np.frombuffer(host.query(0x00101100), "<u2").astype(float) for _ in range(2)]
    assert 2.5 < np.std(singles[0] - singles[1]) / np.std(spectra[0] - spectra[1]) < 6.5  # sqrt(16) = 4

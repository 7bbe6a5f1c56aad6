"""SerialTransport on real pseudo-terminals: frames through noise, a vanished port, backoff without a busy loop."""

import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isic_drivers.emulators.pseudo_terminal import PseudoTerminal
from isic_drivers.obp.codec import Flag, Frame, encode_frame
from isic_drivers.obp.transport import LinkDown, ReplyTimeout, SerialTransport


@pytest.fixture
def line(tmp_path):
    pty = PseudoTerminal(link=str(tmp_path / "spectrometer"))
    yield pty
    pty.remove()


def test_frames_through_garbage_truncation_and_bad_checksums(line):
    frames = [Frame(0x00101100, bytes(range(256)) * 2, flags=Flag.RESPONSE, regarding=i) for i in range(3)]
    bad = bytearray(encode_frame(frames[0]))
    bad[100] ^= 1
    stream = (os.urandom(100) + encode_frame(frames[0])[:200] + encode_frame(frames[1]) + bytes(bad)
              + b"\xc1\xc0\x00\x11" + encode_frame(frames[2]))
    with SerialTransport(line.path, read_timeout_s=2.0) as transport:
        transport.open()
        os.write(line.master_fd, stream)
        assert [transport.read_frame(), transport.read_frame()] == [frames[1], frames[2]]
        assert transport.scanner.stats.checksum_failures == 1
        assert transport.health()["bytes_read"] == len(stream)


def test_cut_frame_at_end_of_line_is_given_up_when_idle(line):
    """A reply cut short and then silence: the next reply is still found (idle resync), not swallowed."""
    cut = encode_frame(Frame(0x00101100, bytes(512), flags=Flag.RESPONSE))[:300]
    whole = Frame(0x100, b"SN", flags=Flag.RESPONSE, regarding=5)
    with SerialTransport(line.path, read_timeout_s=0.5, idle_resync_s=0.1) as transport:
        transport.open()
        os.write(line.master_fd, cut)
        with pytest.raises(ReplyTimeout):
            transport.read_frame()
        os.write(line.master_fd, encode_frame(whole))
        assert transport.read_frame() == whole


def test_write_frame_reaches_the_device(line):
    frame = Frame(0x00110010, b"\x10\x27\x00\x00", flags=Flag.ACK_REQUESTED, regarding=3)
    with SerialTransport(line.path) as transport:
        transport.write_frame(frame)
        assert os.read(line.master_fd, 1000) == encode_frame(frame)


def test_missing_port_backs_off_without_busy_loop(tmp_path):
    with SerialTransport(str(tmp_path / "absent"), backoff_initial_s=0.05, backoff_max_s=2.0) as transport:
        started = time.monotonic()
        with pytest.raises(LinkDown, match="absent"):
            transport.read_frame(timeout_s=1.0)
        assert time.monotonic() - started == pytest.approx(1.0, abs=0.3)
        # 0, 0.05, 0.15, 0.35, 0.75 s: five attempts in a second, not thousands.
        assert 3 <= transport.stats.open_failures <= 6


def test_vanished_port_is_reopened_when_it_returns(line):
    """The line closes (cable pulled), comes back as a new pty behind the same link, and is read again."""
    first, second = Frame(0x100, b"one", flags=Flag.RESPONSE), Frame(0x100, b"two", flags=Flag.RESPONSE)
    with SerialTransport(line.path, read_timeout_s=1.0, backoff_initial_s=0.05) as transport:
        transport.open()
        old_path = line.slave_path
        os.write(line.master_fd, encode_frame(first))
        assert transport.read_frame() == first
        line.close()
        with pytest.raises((ReplyTimeout, LinkDown)):
            transport.read_frame(timeout_s=0.3)
        line.open()
        assert os.path.realpath(line.path) == line.slave_path != "" and old_path
        stop = threading.Event()

        def keep_sending():  # the device repeats until the station has reopened and read it
            while not stop.wait(0.05):
                os.write(line.master_fd, encode_frame(second))

        writer = threading.Thread(target=keep_sending, daemon=True)
        writer.start()
        try:
            assert transport.read_frame(timeout_s=5.0) == second
        finally:
            stop.set()
            writer.join(timeout=2)
        health = transport.health()
        assert health["reconnects"] == 1 and health["link_losses"] == 1 and health["open"]


@pytest.mark.timeout(120)
@settings(max_examples=25, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=600), payload=st.binary(max_size=600))
def test_transport_recovers_next_frame_after_arbitrary_garbage(line, junk, payload):
    frame = Frame(0x00101100, payload, flags=Flag.RESPONSE)
    with SerialTransport(line.path, read_timeout_s=2.0) as transport:
        transport.open()
        os.write(line.master_fd, junk + encode_frame(frame))
        assert transport.read_frame() == frame

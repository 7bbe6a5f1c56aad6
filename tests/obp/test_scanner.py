"""The frame scanner on hostile streams: garbage, truncation, bad checksums, arbitrary splits (hypothesis)."""

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isic_drivers.obp import codec
from isic_drivers.obp.codec import Flag, Frame, encode_frame
from isic_drivers.obp.scanner import FrameScanner

frames = st.builds(
    Frame,
    message_type=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=700),
    flags=st.sampled_from([Flag.RESPONSE, Flag.RESPONSE | Flag.ACK, Flag.ACK_REQUESTED, 0]),
    regarding=st.integers(0, 0xFFFFFFFF),
)
# Garbage that often looks like the start of a frame: random bytes mixed with start markers,
# valid headers and cut-off frames.
garbage_pieces = st.one_of(
    st.binary(max_size=200),
    st.just(codec.START_ON_WIRE),
    st.just(codec.START_ON_WIRE + b"\x00\x11"),
    frames.map(lambda f: encode_frame(f)[:44]),
    st.tuples(frames, st.integers(1, 63)).map(lambda fc: encode_frame(fc[0])[:-fc[1]]),
)
garbage = st.lists(garbage_pieces, max_size=6).map(b"".join)


def split(data: bytes, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def scan(chunks, scanner=None):
    scanner = scanner or FrameScanner()
    found = []
    for chunk in chunks:
        scanner.feed(chunk)
        found.extend(scanner.frames())
    return found, scanner


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=2000)
@given(junk=garbage, first=frames, second=frames, cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_next_valid_frames_are_recovered_after_any_garbage(junk, first, second, cuts):
    """Garbage, then two MD5 frames, fed in arbitrary pieces: both frames come out, in order.

    A false start whose announced length runs past the end of the stream waits for bytes; when the line
    then goes idle the transport calls `flush`, which gives it up: the property covers both paths.
    """
    stream = junk + encode_frame(first) + encode_frame(second)
    found, scanner = scan(split(stream, cuts))
    frame = scanner.flush()
    while frame is not None:
        found.append(frame)
        frame = scanner.flush()
    assert found[-2:] == [first, second]
    assert scanner.pending == 0


@settings(max_examples=300, deadline=1000)
@given(data=st.binary(max_size=400) | garbage)
def test_decoding_arbitrary_bytes_raises_only_frame_errors(data):
    with contextlib.suppress(codec.FrameError):
        codec.decode_frame(data)
    with contextlib.suppress(codec.FrameError):
        codec.frame_length(data)
    scanner = FrameScanner()
    scanner.feed(data)
    list(scanner.frames())
    while scanner.flush() is not None:
        pass
    assert scanner.pending == 0


def test_truncated_frame_does_not_hide_the_next_one():
    first, second = Frame(0x00101100, bytes(512), flags=Flag.RESPONSE), Frame(0x100, b"SN1", flags=Flag.RESPONSE)
    stream = encode_frame(first)[:300] + encode_frame(second)
    found, scanner = scan([stream])
    assert found == []  # the cut frame's announced length is not there yet
    assert scanner.flush() == second
    assert scanner.stats.false_starts >= 1


def test_bad_checksum_frame_is_skipped_and_counted():
    bad = bytearray(encode_frame(Frame(0x100, b"x" * 40)))
    bad[60] ^= 0xFF
    good = Frame(0x101, b"\x05")
    found, scanner = scan([bytes(bad) + encode_frame(good)])
    assert found == [good]
    assert scanner.stats.checksum_failures == 1
    assert scanner.stats.discarded_bytes == len(bad)


def test_random_noise_between_frames_byte_by_byte():
    wanted = [Frame(0x00180101, bytes([i]), regarding=i) for i in range(20)]
    stream = b"".join(os.urandom(37) + encode_frame(f) for f in wanted)
    found, _ = scan([stream[i:i + 1] for i in range(len(stream))])
    assert found == wanted


def test_split_start_marker_is_kept():
    frame = Frame(0x100, b"abc")
    wire = encode_frame(frame)
    found, _ = scan([b"\x00\x01" + wire[:1], wire[1:]])
    assert found == [frame]

"""`isic-station bench serial`: how much of a serial line the OBP reader keeps up with, and how fast it
finds the next frame after garbage.

Throughput: a writer thread pours 256-pixel spectrum frames into a pseudo-terminal as fast as it can
and a SerialTransport reads them for `--seconds`. A pty has no baud clock (bytes move as fast as the
kernel copies them), so the figure is the reader's own throughput; it is then expressed as a multiple
of each line's capacity, baud/10 bytes/s for 8N1 (one start, eight data, one stop bit). Above 1 means
the reader keeps up with that line with room to spare.

Link: the driver asks the emulated instrument (paced at each baud rate: the line's real clock, see
`isic_drivers.emulators.spectrometer`) for spectra back to back for `--seconds`, at the shortest
integration time. `spectra_per_s` is what the link really delivers; `line_spectra_per_s` is the
8N1 limit for one request and its reply (64 + 576 bytes), and `line_efficiency` their ratio (1 =
the link runs at the line's speed; the rest is turnaround in the driver and the emulator).

Resynchronisation: the scanner is fed garbage (random bytes, a truncated frame, a frame with a bad
checksum, a header whose length field claims a much longer frame) followed by valid frames, byte by
byte after the garbage. `extra_bytes` is how many bytes beyond the valid frame's own length had to
arrive before it was recognised (0 = found as soon as it was complete); `cpu_us` is the reader's
processing time from the garbage's end to the frame, with the bytes already there; `line_us` is the
time those extra bytes take on each line. A header claiming a long frame holds the reader until that
many bytes came or the line went idle (`idle_resync_s` of the transport), whichever is first.
"""

import argparse
import json
import os
import random
import select
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from isic_common.errors import ConfigError
from isic_drivers.emulators.pseudo_terminal import PseudoTerminal
from isic_drivers.obp.codec import HEADER_SIZE, MIN_FRAME_SIZE, Flag, Frame, MessageType, encode_frame
from isic_drivers.obp.scanner import FrameScanner
from isic_drivers.obp.spectrometer import ObpSpectrometer
from isic_drivers.obp.transport import LINE_BITS_PER_BYTE, SerialTransport, line_seconds

DEFAULT_BAUDS = (115200, 921600)
RESYNC_TRIALS = 50
PIXELS = 256


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench serial`."""
    parser = subparsers.add_parser(
        "serial", help="OBP reader throughput vs. line capacity, and resync time after garbage",
        description="Frames per second the OBP reader sustains over a pty pair, as a multiple of each baud "
                    "rate's 8N1 capacity (a pty has no baud clock); spectra per second the driver gets from the "
                    "emulated instrument paced at each baud rate (the link's real capacity); and the bytes and time "
                    "it needs to find the next valid frame after garbage.")
    parser.add_argument("--baud", type=int, nargs="+", default=list(DEFAULT_BAUDS), metavar="B",
                        help="line speeds to compare with (default 115200 921600)")
    parser.add_argument("--seconds", type=float, default=3.0, metavar="S",
                        help="seconds of reading per baud rate (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run)


def _spectrum_frame(regarding: int) -> bytes:
    payload = bytes(range(256)) * (PIXELS * 2 // 256)
    return encode_frame(Frame(MessageType.GET_RAW_SPECTRUM, payload, flags=Flag.RESPONSE, regarding=regarding))


def _count_for(seconds: float, step: Callable[[], Any]) -> Tuple[int, float]:
    """Call `step` back to back for `seconds`: (calls, seconds they took)."""
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += 1
    return count, time.perf_counter() - started


def measure_throughput(baud: int, seconds: float) -> Dict[str, float]:
    """Frames and bytes per second a SerialTransport reads from a pty the writer keeps full."""
    frame = _spectrum_frame(1)
    block = frame * 64
    line = PseudoTerminal()
    stop = threading.Event()

    def pour() -> None:
        view = memoryview(block)
        while not stop.is_set():
            if not select.select([], [line.master_fd], [], 0.1)[1]:
                continue
            try:
                written = os.write(line.master_fd, view)
            except (BlockingIOError, OSError):
                continue
            view = view[written:] or memoryview(block)

    os.set_blocking(line.master_fd, False)
    writer = threading.Thread(target=pour, daemon=True)
    try:
        with SerialTransport(line.path, baud, read_timeout_s=2.0) as transport:
            transport.open()
            writer.start()
            frames, elapsed = _count_for(seconds, transport.read_frame)
    finally:
        stop.set()
        if writer.is_alive():
            writer.join(timeout=2)
        line.remove()
    line_bytes_per_s = baud / LINE_BITS_PER_BYTE
    bytes_per_s = frames * len(frame) / elapsed
    return {
        "baud": baud,
        "reader_frames_per_s": frames / elapsed,
        "reader_bytes_per_s": bytes_per_s,
        "line_bytes_per_s": line_bytes_per_s,
        "line_frames_per_s": line_bytes_per_s / len(frame),
        "capacity_multiple": bytes_per_s / line_bytes_per_s,
    }


def measure_link(baud: int, seconds: float) -> Dict[str, float]:
    """Spectra per second the driver reads from the emulated instrument paced at `baud`, vs the line's limit."""
    from isic_drivers.emulators.spectrometer import EmulatedSpectrometer, Server, instrument_for
    from isic_drivers.lab.stage import SampleStage

    instrument = instrument_for(PIXELS, None, None)
    with tempfile.TemporaryDirectory(prefix="isic-bench-serial-") as folder:
        stage = SampleStage(Path(folder) / "stage.json")
        stage.put_reference("white")
        device = EmulatedSpectrometer(stage, instrument, baud=baud)
        line = PseudoTerminal()
        server = Server(device, line, pace=True)
        serving = threading.Thread(target=server.serve, daemon=True)
        serving.start()
        try:
            with SerialTransport(line.path, baud, read_timeout_s=2.0) as transport:
                spectrometer = ObpSpectrometer(transport)
                spectrometer.set_integration_time_us(instrument.min_integration_us)
                spectrometer.raw_spectrum()
                spectra, elapsed = _count_for(seconds, spectrometer.raw_spectrum)
        finally:
            server.stop()
            serving.join(timeout=2)
            line.remove()
    exchange_bytes = MIN_FRAME_SIZE + MIN_FRAME_SIZE + 2 * PIXELS
    line_rate = 1.0 / (line_seconds(exchange_bytes, baud) + instrument.min_integration_us / 1e6)
    return {
        "baud": baud,
        "spectra_per_s": spectra / elapsed,
        "line_spectra_per_s": line_rate,
        "line_efficiency": spectra / elapsed / line_rate,
        "exchange_bytes": exchange_bytes,
    }


def _garbage_kinds() -> Dict[str, bytes]:
    rng = random.Random(7)
    frame = _spectrum_frame(2)
    bad_checksum = bytearray(frame)
    bad_checksum[-10] ^= 0xFF
    long_header = bytearray(frame[:HEADER_SIZE])
    struct.pack_into("<L", long_header, HEADER_SIZE - 4, 4096 + 20)  # claims a 4 KiB payload
    return {
        "random_256_bytes": bytes(rng.getrandbits(8) for _ in range(256)),
        "truncated_frame": frame[: len(frame) // 2],
        "bad_checksum_frame": bytes(bad_checksum),
        "header_claiming_4KiB": bytes(long_header) + bytes(rng.getrandbits(8) for _ in range(100)),
    }


def measure_resync(bauds: List[int]) -> List[Dict[str, Any]]:
    """Per garbage kind: extra bytes and reader time from the garbage's end to the next valid frame."""
    valid = _spectrum_frame(3)
    following = _spectrum_frame(4) * 16
    results = []
    for kind, garbage in _garbage_kinds().items():
        extra, cpu_us = [], []
        for _ in range(RESYNC_TRIALS):
            scanner = FrameScanner()
            scanner.feed(garbage)
            scanner.next_frame()
            stream = valid + following
            fed = 0
            frame = None
            while frame is None and fed < len(stream):  # byte by byte: the count of bytes needed
                scanner.feed(stream[fed:fed + 1])
                fed += 1
                frame = scanner.next_frame()
            extra.append(fed - len(valid) if frame is not None and frame.regarding == 3 else -1)
            scanner = FrameScanner()
            scanner.feed(garbage)
            scanner.next_frame()
            started = time.perf_counter()
            scanner.feed(stream)
            frame = scanner.next_frame()
            cpu_us.append((time.perf_counter() - started) * 1e6)
        extra_bytes = int(statistics.median(extra))
        results.append({
            "garbage": kind,
            "garbage_bytes": len(garbage),
            "extra_bytes": extra_bytes,
            "found_valid_frame": min(extra) >= 0,
            "cpu_us": statistics.median(cpu_us),
            "line_us": {str(b): line_seconds(max(extra_bytes, 0), b) * 1e6 for b in bauds},
        })
    return results


def run(args: Any) -> int:
    """Measure and print the figures."""
    if args.seconds <= 0 or any(b <= 0 for b in args.baud):
        raise ConfigError("--seconds and every --baud must be > 0")
    frame_bytes = len(_spectrum_frame(0))
    throughput = [measure_throughput(baud, args.seconds) for baud in args.baud]
    link = [measure_link(baud, args.seconds) for baud in args.baud]
    resync = measure_resync(args.baud)
    if args.json:
        print(json.dumps({"frame_bytes": frame_bytes, "seconds": args.seconds, "throughput": throughput,
                          "link": link, "resync": resync}))
        return 0
    print(f"OBP reader over a pty pair, {frame_bytes}-byte frames ({PIXELS}-pixel uint16 spectrum), "
          f"{args.seconds:g} s per baud. A pty has no baud clock: the figures are the reader's own "
          f"throughput, compared with each line's 8N1 capacity (baud/10 bytes/s).")
    for row in throughput:
        print(f"  {row['baud']:>7} baud: line carries {row['line_frames_per_s']:.1f} frames/s; reader sustained "
              f"{row['reader_frames_per_s']:.0f} frames/s ({row['reader_bytes_per_s'] / 1e6:.2f} MB/s) = "
              f"{row['capacity_multiple']:.1f} x the line's capacity")
    print(f"Link to the emulated instrument paced at each baud rate (8N1), spectra back to back "
          f"({link[0]['exchange_bytes']} bytes per request and reply, shortest integration):")
    for row in link:
        print(f"  {row['baud']:>7} baud: {row['spectra_per_s']:.1f} spectra/s of the line's "
              f"{row['line_spectra_per_s']:.1f} ({100.0 * row['line_efficiency']:.0f} %)")
    print(f"Resync after garbage (median of {RESYNC_TRIALS}): extra bytes beyond the valid frame before it was "
          "recognised, reader time with the bytes present, and the extra bytes' time on each line:")
    for row in resync:
        lines = ", ".join(f"{us:.0f} us @ {b}" for b, us in row["line_us"].items())
        print(f"  {row['garbage']:<22} ({row['garbage_bytes']:>3} B): extra {row['extra_bytes']:>4} B, "
              f"reader {row['cpu_us']:.0f} us, line {lines}" + ("" if row["found_valid_frame"] else "  NOT FOUND"))
    return 0

"""Find OBP frames in a byte stream from a noisy serial line, one frame at a time.

A serial line delivers garbage (a device booting, noise on the cable), frames cut short (a cable
pulled mid-reply) and frames with flipped bits. The scanner looks for the start bytes C1 C0, checks
the header, waits for the announced length, then checks footer and checksum. When any check fails it
resumes scanning one byte after the false start, so a valid frame that begins inside the rejected
bytes (the frame right after a truncated one) is still found. It does no I/O: the serial transport
feeds it, and the tests and the benchmark feed it directly.
"""

from dataclasses import dataclass
from typing import Iterator, Optional

from isic_drivers.obp.codec import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    START_ON_WIRE,
    ChecksumMismatch,
    Frame,
    FrameError,
    decode_frame,
    frame_length,
)


@dataclass
class ScannerStats:
    """What the scanner saw: frames decoded, bytes thrown away, false starts, checksum failures."""

    frames: int = 0
    discarded_bytes: int = 0
    false_starts: int = 0
    checksum_failures: int = 0


class FrameScanner:
    """Incremental frame finder: `feed(bytes)`, then `next_frame()` until it returns None."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self.stats = ScannerStats()
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that are not yet part of a decoded frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Append bytes read from the line."""
        self._buffer += data

    def clear(self) -> None:
        """Forget buffered bytes (the line was reopened: what came before cannot continue)."""
        self.stats.discarded_bytes += len(self._buffer)
        self._buffer.clear()

    def frames(self) -> Iterator[Frame]:
        """Every complete frame in the buffer, in order."""
        frame = self.next_frame()
        while frame is not None:
            yield frame
            frame = self.next_frame()

    def next_frame(self) -> Optional[Frame]:
        """The next valid frame, or None when more bytes are needed."""
        buffer = self._buffer
        while True:
            start = buffer.find(START_ON_WIRE)
            if start < 0:
                # Keep a trailing C1: it may be the first half of the next start marker.
                keep = 1 if buffer[-1:] == START_ON_WIRE[:1] else 0
                self._discard(len(buffer) - keep)
                return None
            self._discard(start)
            if len(buffer) < HEADER_SIZE:
                return None
            try:
                length = frame_length(bytes(buffer[:HEADER_SIZE]), self.max_payload)
            except FrameError:
                self._reject()
                continue
            if len(buffer) < length:
                return None
            try:
                frame = decode_frame(bytes(buffer[:length]), self.max_payload)
            except ChecksumMismatch:
                self.stats.checksum_failures += 1
                self._reject()
                continue
            except FrameError:
                self._reject()
                continue
            del buffer[:length]
            self.stats.frames += 1
            return frame

    def flush(self) -> Optional[Frame]:
        """The line went idle: no more bytes will complete what is pending.

        An incomplete candidate then was a false start (a truncated frame, a header whose length was
        hit by noise): drop it one byte at a time and return the first complete frame found in the
        rest, or None once the buffer is empty.
        """
        while self._buffer:
            frame = self.next_frame()
            if frame is not None:
                return frame
            if self._buffer:
                self._reject()
        return None

    def _discard(self, count: int) -> None:
        if count > 0:
            del self._buffer[:count]
            self.stats.discarded_bytes += count

    def _reject(self) -> None:
        """A false start: drop its first byte only, so a frame starting inside it is still found."""
        self.stats.false_starts += 1
        self._discard(1)

"""A real sd_notify receiver for the tests: an AF_UNIX datagram socket of the test's own.

systemd's side of the protocol is a datagram socket that reads ``KEY=value`` lines; this is the
same, bound either to a path (``/run/systemd/notify`` style) or to an abstract name (``@...``).
"""

import os
import shutil
import socket
import tempfile
import time
import uuid
from typing import Callable, Dict, Iterator, List, Optional

import pytest


class NotifyReceiver:
    """Collects the datagrams sent to `notify_socket` (the value to put in ``$NOTIFY_SOCKET``)."""

    def __init__(self, abstract: bool) -> None:
        self._dir = None  # type: Optional[str]
        if abstract:
            name = f"isic-test-notify-{uuid.uuid4().hex}"
            bind_to = "\0" + name
            self.notify_socket = "@" + name
        else:
            # A short directory: AF_UNIX paths are limited to 107 bytes and pytest's tmp_path can be longer.
            self._dir = tempfile.mkdtemp(prefix="isic-notify-")
            bind_to = os.path.join(self._dir, "notify")
            self.notify_socket = bind_to
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.messages = []  # type: List[Dict[str, str]]
        self.arrival = []  # type: List[float]

    def receive(self, timeout: float) -> Optional[Dict[str, str]]:
        """The next datagram as a dict of its fields, or None when none arrives within `timeout` s."""
        self.sock.settimeout(max(timeout, 1e-3))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        fields = dict(line.split("=", 1) for line in data.decode("utf-8").split("\n") if line)
        self.messages.append(fields)
        self.arrival.append(time.monotonic())
        return fields

    def collect(self, seconds: float) -> List[Dict[str, str]]:
        """Every datagram that arrives during the next `seconds`."""
        got = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            fields = self.receive(left)
            if fields is not None:
                got.append(fields)

    def wait_for(self, predicate: Callable[[Dict[str, str]], bool], timeout: float, what: str) -> Dict[str, str]:
        """The first datagram (from now) matching `predicate`; fail the test after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no sd_notify message with {what} within {timeout} s; got {self.messages[-10:]}")
            fields = self.receive(left)
            if fields is not None and predicate(fields):
                return fields

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def notify_receiver(request: pytest.FixtureRequest) -> Iterator[NotifyReceiver]:
    """A receiver on a filesystem path, then on an abstract name (the two forms systemd uses)."""
    receiver = NotifyReceiver(abstract=request.param == "abstract")
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def path_notify_receiver() -> Iterator[NotifyReceiver]:
    """A receiver on a filesystem path only (for the slower tests that need one form)."""
    receiver = NotifyReceiver(abstract=False)
    try:
        yield receiver
    finally:
        receiver.close()

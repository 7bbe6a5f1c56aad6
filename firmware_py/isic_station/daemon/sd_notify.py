"""Tell systemd how the station is doing: readiness, status text, shutdown, and a progress-tied watchdog.

Why hand-written: the sd_notify protocol is a stable, documented datagram interface
(systemd's sd_notify(3) "is a simple datagram"; its man page invites re-implementing it), and
the only libraries that wrap it either need libsystemd built for the board (python-systemd,
cysystemd) or are thin wrappers of these same few lines. The station must run on an Atlas board
without a compiler, so the protocol is spoken here with the stdlib: one AF_UNIX/SOCK_DGRAM
datagram of ``KEY=value`` lines to the address in ``$NOTIFY_SOCKET`` (a leading ``@`` names a
socket in the abstract namespace). Without ``$NOTIFY_SOCKET`` (run by hand, in tests, in the demo)
every call is a no-op, so the daemon never needs to know whether systemd started it.

The watchdog is tied to real work: `ProgressWatchdog` pings ``WATCHDOG=1`` only while the
pipeline keeps reporting progress. A stuck pipeline stops the pings, so systemd kills and
restarts the station after ``WatchdogSec=`` instead of keeping a live but useless process.
"""

import logging
import os
import re
import socket
import threading
import time
from typing import Mapping, Optional

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

_FIELD_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _socket_address(notify_socket: str) -> Optional[str]:
    """The address to send to, or None when `notify_socket` is not a form this module speaks.

    systemd hands out a filesystem path (``/run/systemd/notify``) or an abstract name
    (``@/org/freedesktop/systemd1/notify/...``). Newer systemd also knows ``vsock:`` addresses,
    which only matter inside virtual machines; those are refused with a log line, not guessed at.
    """
    if notify_socket.startswith("/"):
        return notify_socket
    if notify_socket.startswith("@") and len(notify_socket) > 1:
        return "\0" + notify_socket[1:]
    return None


class ServiceNotifier:
    """Sends sd_notify messages to the service manager; every method is a no-op without one.

    Methods return True when a datagram went out, False when notification is off or sending
    failed (a failed notification is logged, never raised: losing a STATUS line must not stop
    the measurements).
    """

    def __init__(self, notify_socket: Optional[str]) -> None:
        self._notify_socket = notify_socket
        self._address = None  # type: Optional[str]
        self._sock = None  # type: Optional[socket.socket]
        self._lock = threading.Lock()
        if notify_socket:
            self._address = _socket_address(notify_socket)
            if self._address is None:
                log.warning("%s=%r is neither a path nor an @abstract name; systemd notification is off",
                            NOTIFY_SOCKET_ENV, notify_socket)

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "ServiceNotifier":
        """The notifier for this process: on when systemd set ``$NOTIFY_SOCKET`` (Type=notify)."""
        env = os.environ if environ is None else environ
        return cls(env.get(NOTIFY_SOCKET_ENV))

    @property
    def enabled(self) -> bool:
        """True when messages go to a service manager."""
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``NAME=value`` lines, e.g. ``notify(READY=1, STATUS="measuring")``.

        Names are sd_notify(3) variables (upper case). A newline in a value would start a new
        variable, so newlines in values become spaces.
        """
        if not fields:
            raise ValueError("notify() needs at least one NAME=value field")
        lines = []
        for name, value in fields.items():
            if not _FIELD_NAME.match(name):
                raise ValueError(f"sd_notify field name {name!r} is not an upper-case variable name")
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{name}={text}")
        if self._address is None:
            return False
        payload = "\n".join(lines).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                log.warning("could not notify systemd at %s: %s", self._notify_socket, exc)
                return False
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        """READY=1: the station serves (model loaded, devices open, or started degraded: say so in `status`)."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """STATUS=...: one line a technician reads in `systemctl status isic-station`."""
        return self.notify(STATUS=text)

    def stopping(self, status: Optional[str] = None) -> bool:
        """STOPPING=1: shutdown has begun (the outbox flush follows)."""
        if status is None:
            return self.notify(STOPPING=1)
        return self.notify(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        """WATCHDOG=1: one keep-alive ping. Prefer `ProgressWatchdog`, which pings only on real progress."""
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        """Release the socket (a later call opens a new one)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval_s(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """systemd's watchdog interval for this process in seconds, or None when no watchdog is armed.

    Same rules as sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` is a positive integer of
    microseconds, and when ``$WATCHDOG_PID`` is set it must be this process (otherwise the
    variables were inherited from a parent and are not ours).
    """
    env = os.environ if environ is None else environ
    usec_text = env.get(WATCHDOG_USEC_ENV)
    if not usec_text:
        return None
    pid_text = env.get(WATCHDOG_PID_ENV)
    if pid_text and pid_text.strip() != str(os.getpid()):
        log.info("%s=%s names another process; the watchdog is not ours", WATCHDOG_PID_ENV, pid_text)
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("%s=%r is not an integer of microseconds; watchdog off", WATCHDOG_USEC_ENV, usec_text)
        return None
    if usec <= 0:
        log.warning("%s=%s is not positive; watchdog off", WATCHDOG_USEC_ENV, usec_text)
        return None
    return usec / 1e6


class ProgressWatchdog:
    """Pings WATCHDOG=1 every half interval, but only while the pipeline reports progress.

    The station calls `progress(step)` whenever a measurement or an acquisition step completes
    (and during start-up, after each slow step such as loading the model). A timer thread pings
    while the last progress is younger than `stall_after_s`; once it is older, the pings stop and
    a STATUS line says which step was last seen and how long ago, so systemd's ``WatchdogSec=``
    expires and the station is restarted. When progress resumes before that, pings resume and the
    status says so. `start()` counts as progress, which gives start-up one stall window of grace.

    Without a watchdog interval (no ``$WATCHDOG_USEC``) `start()` runs no thread and
    `progress()` only records the step, so the station uses this object unconditionally.
    """

    def __init__(self, notifier: ServiceNotifier, interval_s: Optional[float],
                 stall_after_s: Optional[float] = None) -> None:
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"watchdog interval_s must be positive, got {interval_s}")
        if stall_after_s is not None and stall_after_s <= 0:
            raise ValueError(f"stall_after_s must be positive, got {stall_after_s}")
        self._notifier = notifier
        self.interval_s = interval_s
        # Default stall window: one watchdog interval, so a stuck station is restarted within two.
        self.stall_after_s = stall_after_s if stall_after_s is not None else (interval_s or 0.0)
        self._lock = threading.Lock()
        self._last_progress = time.monotonic()
        self._last_step = "start"
        self._stalled = False
        self._stop = threading.Event()
        self._thread = None  # type: Optional[threading.Thread]

    @classmethod
    def from_environment(cls, notifier: ServiceNotifier, stall_after_s: Optional[float] = None,
                         environ: Optional[Mapping[str, str]] = None) -> "ProgressWatchdog":
        """A watchdog armed from ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` (unarmed when systemd set none)."""
        return cls(notifier, watchdog_interval_s(environ), stall_after_s)

    @property
    def enabled(self) -> bool:
        """True when systemd armed a watchdog and notification is on."""
        return self.interval_s is not None and self._notifier.enabled

    @property
    def stalled(self) -> bool:
        """True while the pipeline has reported no progress within the stall window (pings withheld)."""
        with self._lock:
            return self._stalled

    def progress(self, step: str = "") -> None:
        """Record that the pipeline completed `step` just now (cheap; call from any thread)."""
        with self._lock:
            self._last_progress = time.monotonic()
            if step:
                self._last_step = step

    def start(self) -> None:
        """Count now as progress and, when armed, start the ping thread (idempotent)."""
        self.progress("start")
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        log.info("systemd watchdog armed: interval %.3g s, pings every %.3g s while progress is "
                 "younger than %.3g s", self.interval_s, self._ping_period_s(), self.stall_after_s)

    def stop(self) -> None:
        """Stop the ping thread (on shutdown, after STOPPING=1)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def __enter__(self) -> "ProgressWatchdog":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _ping_period_s(self) -> float:
        return (self.interval_s or 0.0) / 2.0

    def _run(self) -> None:
        period = self._ping_period_s()
        while True:
            self._tick()
            if self._stop.wait(period):
                return

    def _tick(self) -> None:
        """One timer step: ping if progress is fresh, otherwise withhold and say so once."""
        with self._lock:
            age = time.monotonic() - self._last_progress
            step = self._last_step
            was_stalled = self._stalled
            self._stalled = age > self.stall_after_s
            stalled = self._stalled
        if not stalled:
            self._notifier.watchdog()
            if was_stalled:
                log.warning("pipeline progressing again (%s); watchdog pings resumed", step)
                self._notifier.status(f"Pipeline progressing again after a stall (last step: {step})")
        elif not was_stalled:
            message = (f"Pipeline stalled: no progress for {age:.1f} s (last step: {step}); "
                       f"watchdog pings stopped, systemd will restart the station")
            log.error("%s", message)
            self._notifier.status(message)

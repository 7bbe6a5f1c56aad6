"""Log output for a person at a terminal or for journald, chosen from the environment.

Under systemd, stderr goes to journald, which stamps every line with its own time: a second
timestamp would only make `journalctl` lines longer. journald also reads a `<N>` prefix
(sd-daemon(3), SyslogLevelPrefix=yes is the default) as the line's syslog priority, so
`journalctl -p warning` works. We detect journald the documented way: `$JOURNAL_STREAM` holds
the device:inode of the stream journald connected, compared with stderr's own; when stderr is
not a terminal and `$INVOCATION_ID` says systemd started us, it is treated the same way.

Log lines cannot be forged: values from outside (lot and sample ids, command names, payload
excerpts) reach the message through `%s`, and the formatters escape every control character of the
message (`untrusted.escape_control`), so a newline in a lot id cannot start a line that looks like
the station's own, and NUL or ANSI escapes never reach the terminal or journald raw. A traceback's
lines are indented and escaped the same way: only the first line of a record starts at the margin.
"""

import logging
import os
import sys
from typing import Any, Mapping, Optional, TextIO

from isic_station.messaging.untrusted import escape_control

# syslog priorities of the Python levels (sd-daemon.h: SD_ERR=3, SD_WARNING=4, SD_INFO=6, SD_DEBUG=7)
SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

TERMINAL_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"


class EscapingFormatter(logging.Formatter):
    """A one-line message with control characters escaped; traceback lines indented and escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_control(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("  " + escape_control(line) for line in text.splitlines())


class JournalFormatter(EscapingFormatter):
    """No timestamp (journald adds one) and a `<N>` syslog priority in front of every line."""

    def format(self, record: logging.LogRecord) -> str:
        priority = SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        # every line of a multi-line record (a traceback) carries the prefix, so none is lost to <6>
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def stderr_is_journal(environ: Optional[Mapping[str, str]] = None, stream: Optional[TextIO] = None) -> bool:
    """True when stderr is connected to journald (or is a non-terminal stream under systemd)."""
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    try:
        fd = stream.fileno()
        st = os.fstat(fd)
        is_tty = os.isatty(fd)
    except (OSError, ValueError, AttributeError):
        return bool(environ.get("JOURNAL_STREAM"))
    journal = environ.get("JOURNAL_STREAM", "")
    if journal:
        device, _, inode = journal.partition(":")
        if device.isdigit() and inode.isdigit():
            return (st.st_dev, st.st_ino) == (int(device), int(inode))
        return True
    return bool(environ.get("INVOCATION_ID")) and not is_tty


def setup_logging(level: str = "INFO", journal: Optional[bool] = None, stream: Optional[TextIO] = None) -> None:
    """Send every logger's records to stderr in the format that suits where stderr goes.

    Called once at start-up (and again after the config is read, with the configured level).
    """
    stream = sys.stderr if stream is None else stream
    if journal is None:
        journal = stderr_is_journal(stream=stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter(JOURNAL_FORMAT) if journal else EscapingFormatter(TERMINAL_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # paho logs every packet at DEBUG; the station's own records say what matters
    logging.getLogger("paho").setLevel(max(root.level, logging.INFO))

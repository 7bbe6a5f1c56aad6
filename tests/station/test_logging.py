"""Log format follows where stderr goes: timestamps for a terminal or file, `<N>` priorities for journald."""

import logging
import os
import subprocess
import sys
from pathlib import Path

from isic_station.logging_setup import JournalFormatter, stderr_is_journal


def test_journal_stream_matching_stderr_means_journald(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        # inherited from a parent whose stderr went to the journal, ours goes elsewhere
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not stderr_is_journal({}, stream)
        # started by systemd (INVOCATION_ID) with stderr not a terminal
        assert stderr_is_journal({"INVOCATION_ID": "abc"}, stream)


def test_journal_lines_carry_priority_and_no_timestamp() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("isic_station.x", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert formatter.format(record) == "<4>isic_station.x: two\n<4>lines"
    record = logging.LogRecord("isic_station.x", logging.DEBUG, __file__, 1, "d", None, None)
    assert formatter.format(record) == "<7>isic_station.x: d"


def test_the_daemon_logs_for_journald_when_started_by_systemd(tmp_path: Path) -> None:
    """A real process logs without a timestamp under JOURNAL_STREAM, with one otherwise."""
    code = ("import logging; from isic_station.logging_setup import setup_logging; setup_logging('INFO'); "
            "logging.getLogger('isic_station.t').warning('hello')")
    err = tmp_path / "err"
    with open(err, "w") as stream:
        st = os.fstat(stream.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        subprocess.run([sys.executable, "-c", code], stderr=stream, env=env, timeout=30, check=True)
    assert err.read_text() == "<4>isic_station.t: hello\n"
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    line = proc.stderr.strip()
    assert line.endswith("WARNING isic_station.t: hello") and line[:4].isdigit() and not line.startswith("<")

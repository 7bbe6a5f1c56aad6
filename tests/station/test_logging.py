"""Log format follows where stderr goes: timestamps for a terminal or file, `<N>` priorities for journald."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from isic_station.daemon.logging_setup import JournalFormatter, stderr_is_journal


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
    assert formatter.format(record) == "<4>isic_station.x: two\\nlines", "a message is one line"
    record = logging.LogRecord("isic_station.x", logging.DEBUG, __file__, 1, "d", None, None)
    assert formatter.format(record) == "<7>isic_station.x: d"


def test_the_daemon_logs_for_journald_when_started_by_systemd(tmp_path: Path) -> None:
    """A real process logs without a timestamp under JOURNAL_STREAM, with one otherwise."""
    code = ("import logging; from isic_station.daemon.logging_setup import setup_logging; setup_logging('INFO'); "
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


FORGED = "L-1\nisic_station.station: spectrometer lamp failure\x00\x1b[31m\u2028red"


@pytest.mark.parametrize("journal", [True, False])
def test_outside_values_cannot_forge_a_log_line(tmp_path: Path, journal: bool) -> None:
    """A lot id with a newline, NUL and ANSI escapes, logged as the station logs it, and in a traceback."""
    code = ("import json, logging, sys; from isic_station.daemon.logging_setup import setup_logging; "
            "setup_logging('INFO'); "
            "log = logging.getLogger('isic_station.daemon.station'); lot = json.loads(sys.argv[1])\n"
            "log.info('lot %s: declared %s', lot, {'cotton': 1.0})\n"
            "try:\n    raise ValueError(f'bad lot {lot}')\nexcept ValueError:\n    log.exception('set_lot failed')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    with open(tmp_path / "err", "w") as stream:
        if journal:
            st = os.fstat(stream.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", code, json.dumps(FORGED)], stderr=stream, env=env, timeout=30, check=True)
    raw = (tmp_path / "err").read_bytes()
    assert b"\x00" not in raw and b"\x1b" not in raw and "\u2028".encode() not in raw
    lines = raw.decode().splitlines()
    own = [line for line in lines if line.lstrip("<0123456789>")[:1] not in (" ", "")]
    margin = [line.split(" ", 3)[-1] if not journal else line[3:] for line in own]
    assert len(own) == 2, lines  # the info line and the exception's first line; the traceback is indented
    assert all("spectrometer lamp failure" not in line.split(":", 1)[0] for line in margin)
    assert "L-1\\nisic_station.station: spectrometer lamp failure\\x00\\x1b[31m\\u2028red" in lines[0]

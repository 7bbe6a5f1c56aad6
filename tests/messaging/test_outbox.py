"""The durable outbox on a real SQLite file: order, PUBACK-only deletion, quota, restarts, SIGKILL."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from isic_common.errors import ConfigError, StateDirError
from isic_station.messaging.outbox import MIN_QUOTA_BYTES, Outbox


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "state" / "outbox.sqlite3")
    yield box
    box.close()


def test_pending_oldest_first_and_deleted_only_by_its_mid(outbox):
    ids = [outbox.add("t/result", {"n": n}) for n in range(3)]
    assert [e.row_id for e in outbox.pending(10)] == ids
    outbox.mark_inflight(ids[0], 41)
    outbox.mark_inflight(ids[1], 42)
    assert [e.row_id for e in outbox.pending(10)] == [ids[2]], "in-flight entries are not pending"
    assert outbox.inflight_count() == 2
    assert outbox.ack(99) is None, "an unknown mid deletes nothing"
    assert outbox.stats().depth == 3
    assert outbox.ack(42) == ids[1]
    assert outbox.stats().depth == 2
    assert [json.loads(e.payload)["n"] for e in outbox.pending(10)] == [2]


def test_start_replay_requeues_inflight_and_marks_replayed(outbox):
    row = outbox.add("t/result", {"n": 1, "replayed": False})
    outbox.mark_inflight(row, 7)
    assert outbox.start_replay() == 1
    (entry,) = outbox.pending(10)
    assert entry.replayed
    assert json.loads(entry.wire_payload()) == {"n": 1, "replayed": True}
    assert outbox.ack(7) is None, "a mid from the lost connection must not delete the requeued entry"
    assert outbox.stats().depth == 1


def test_live_entry_is_sent_unchanged(outbox):
    outbox.add("t/result", b'{"replayed":false}')
    (entry,) = outbox.pending(1)
    assert entry.wire_payload() == b'{"replayed":false}'


def test_sequence_and_entries_survive_reopening(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    assert [box.next_sequence() for _ in range(3)] == [1, 2, 3]
    box.add("t/result", {"n": 1})
    box.close()
    box = Outbox(path)
    try:
        assert box.next_sequence() == 4
        assert box.stats().depth == 1
    finally:
        box.close()


def test_quota_drops_oldest_counts_and_logs(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, quota_bytes=MIN_QUOTA_BYTES)
    payload = {"blob": "x" * 1000}
    caplog.set_level(logging.WARNING, logger="isic_station.messaging.outbox")
    ids = [box.add("t/result", dict(payload, n=n)) for n in range(40)]
    stats = box.stats()
    assert stats.bytes <= MIN_QUOTA_BYTES
    assert stats.dropped_total == 40 - stats.depth > 0
    kept = [json.loads(e.payload)["n"] for e in box.pending(100)]
    assert kept == list(range(40 - stats.depth, 40)), "the oldest entries are the ones dropped"
    assert [e.row_id for e in box.pending(100)] == ids[-stats.depth:]
    assert any("quota" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)
    box.close()
    reopened = Outbox(path, quota_bytes=MIN_QUOTA_BYTES)
    try:
        assert reopened.stats().dropped_total == stats.dropped_total, "the dropped count is kept on disk"
        assert reopened.stats().bytes == stats.bytes
    finally:
        reopened.close()


def test_stats_depth_and_oldest_age(outbox):
    assert outbox.stats().oldest_age_s is None
    outbox.add("t/result", {"n": 1})
    stats = outbox.stats()
    assert stats.depth == 1 and 0 <= stats.oldest_age_s < 5
    assert set(stats.to_dict()) == {"depth", "oldest_age_s", "bytes", "quota_bytes", "dropped_total", "held",
                                    "storage_fault"}


def test_qos0_and_oversized_entries_are_refused(outbox):
    with pytest.raises(ValueError, match="QoS"):
        outbox.add("t/x", b"x", qos=0)
    small = Outbox(outbox.path.parent / "small.sqlite3", quota_bytes=MIN_QUOTA_BYTES)
    try:
        with pytest.raises(ValueError, match="quota"):
            small.add("t/x", b"x" * (MIN_QUOTA_BYTES + 1))
    finally:
        small.close()


def test_quota_too_small_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="at least"):
        Outbox(tmp_path / "o.sqlite3", quota_bytes=100)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_state_dir_names_the_path(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StateDirError, match=str(locked)):
            Outbox(locked / "outbox.sqlite3")
    finally:
        locked.chmod(0o700)


def test_state_dir_that_is_a_file_names_the_path(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(StateDirError, match=str(blocker)):
        Outbox(blocker / "outbox.sqlite3")


def test_entries_and_sequence_survive_sigkill(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    script = textwrap.dedent(f"""
        import sys, time
        from isic_station.messaging.outbox import Outbox
        box = Outbox({str(path)!r})
        for n in range(25):
            box.add("t/result", {{"sequence": box.next_sequence()}})
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    box = Outbox(path)
    try:
        assert [json.loads(e.payload)["sequence"] for e in box.pending(100)] == list(range(1, 26))
        assert box.next_sequence() == 26
    finally:
        box.close()


def test_read_only_location_is_a_state_dir_error_even_for_root():
    target = "/proc/isic-station-state/outbox.sqlite3"
    with pytest.raises(StateDirError, match="/proc/isic-station-state"):
        Outbox(target)

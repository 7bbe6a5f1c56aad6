"""The outbox against its own faults, on real files: pages overwritten, the file emptied, its header
damaged, the file lost, a full disk (a real tmpfs). Nothing measured is lost, no sequence number goes back
or repeats, and every fault is an incident the station turns into a storage_fault alarm.
"""

import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from isic_station.messaging.outbox import RETRY_S, SEQUENCE_BLOCK, Outbox

from .disk import SmallDisk


def fill_box(path: Path, n: int) -> List[int]:
    """`n` results stored (none acknowledged); the sequences taken."""
    box = Outbox(path)
    try:
        taken = []
        for _ in range(n):
            taken.append(box.next_sequence())
            box.add("t/st/result", {"sequence": taken[-1], "pad": "x" * 300})
        return taken
    finally:
        box.close()


def stored_sequences(box: Outbox) -> List[int]:
    return [json.loads(e.payload)["sequence"] for e in box.pending(10_000)]


def kept_copies(path: Path) -> List[Path]:
    return sorted(p for p in path.parent.glob(path.name + ".corrupt-*") if not p.name.endswith(("-wal", "-shm")))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite3"


def test_random_pages_overwritten_move_the_file_aside_and_keep_what_can_be_read(db_path: Path) -> None:
    taken = fill_box(db_path, 200)
    size = db_path.stat().st_size
    rng = random.Random(16)
    with open(db_path, "r+b") as fh:  # page 1 stays (the header); later pages get garbage
        for page in rng.sample(range(2, size // 4096), 6):
            fh.seek(page * 4096)
            fh.write(rng.randbytes(4096))
    box = Outbox(db_path)
    try:
        (kept,) = kept_copies(db_path)
        (incident,) = box.take_incidents()
        assert incident.severity == "critical" and "damaged" in incident.message and kept.name in incident.message
        recovered = stored_sequences(box)
        assert recovered == sorted(recovered) and set(recovered) <= set(taken)
        assert incident.details["recovered"] == len(recovered)
        assert box.next_sequence() > max(taken), "the sequence never goes back"
        assert all(e.replayed for e in box.pending(10_000)), "recovered entries are re-sends"
    finally:
        box.close()


def test_an_emptied_database_continues_after_the_high_water_mark(db_path: Path) -> None:
    taken = fill_box(db_path, 456 % SEQUENCE_BLOCK + 3)
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    db_path.write_bytes(b"")  # emptied to 0 bytes: SQLite would take it for a new database
    box = Outbox(db_path)
    try:
        number = box.next_sequence()
        assert number > max(taken) and number - max(taken) <= SEQUENCE_BLOCK, number
        (gap,) = box.take_incidents()
        assert gap.severity == "warning" and "gap" in gap.message and gap.details["continues_at"] == number
    finally:
        box.close()


@pytest.mark.parametrize("damage", ["header", "deleted"])
def test_a_damaged_header_or_a_lost_file_never_renumbers(db_path: Path, damage: str) -> None:
    taken = fill_box(db_path, 30)
    if damage == "header":
        with open(db_path, "r+b") as fh:
            fh.write(b"not an sqlite file at all" * 4)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_path) + suffix).unlink(missing_ok=True)
    box = Outbox(db_path)  # opens: no DatabaseError traceback, no exit 74
    try:
        assert box.next_sequence() > max(taken)
        kinds = [i.severity for i in box.take_incidents()]
        assert ("critical" in kinds) == (damage == "header") and "warning" in kinds, kinds
        assert len(kept_copies(db_path)) == (1 if damage == "header" else 0)
    finally:
        box.close()


def test_a_lost_high_water_file_with_a_sound_database_continues_without_a_gap(db_path: Path) -> None:
    taken = fill_box(db_path, 5)
    db_path.with_suffix(".high-water").unlink()
    box = Outbox(db_path)
    try:
        assert box.next_sequence() == max(taken) + 1 and box.take_incidents() == []
        assert db_path.with_suffix(".high-water").exists(), "written again"
    finally:
        box.close()


def test_alarms_are_never_dropped_by_the_quota_and_a_drop_is_an_incident(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=16 * 1024)
    try:
        box.add("t/st/alarm", {"alarm": 0, "pad": "a" * 400}, droppable=False)
        for n in range(60):
            box.add("t/st/result", {"n": n, "pad": "r" * 400})
        topics = [e.topic for e in box.pending(1000)]
        assert topics[0] == "t/st/alarm" and box.stats().dropped_total > 0
        incidents = box.take_incidents()
        assert len(incidents) == 1, "one incident per episode, not one per dropped result"
        assert "quota" in incidents[0].message and incidents[0].details["dropped"] >= 1
    finally:
        box.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", size_kib=512)
    yield disk
    disk.unmount()


def test_a_full_disk_holds_results_in_memory_and_writes_them_when_space_returns(small_disk: SmallDisk) -> None:
    box = Outbox(small_disk.path / "outbox.sqlite3")
    try:
        for _ in range(5):
            box.add("t/st/result", {"sequence": box.next_sequence()})
        small_disk.fill()
        rows = []
        for _ in range(40):  # a measurement a second would be dropped here before: none is now
            rows.append(box.add("t/st/result", {"sequence": box.next_sequence(), "pad": "x" * 2000}))
        stats = box.stats()
        assert box.fault and "full" in box.fault and stats.storage_fault == box.fault
        assert stats.held > 0 and min(rows) < 0, "held in memory, not lost"
        (incident,) = [i for i in box.take_incidents() if i.severity == "critical"]
        assert "storage fault" in incident.message
        small_disk.free()
        time.sleep(RETRY_S + 0.1)
        stats = box.stats()
        assert (stats.held, stats.storage_fault, box.fault) == (0, None, None)
        assert stored_sequences(box) == list(range(1, 46)), "every result, in order, none renumbered"
    finally:
        box.close()
    reopened = Outbox(small_disk.path / "outbox.sqlite3")
    try:
        assert reopened.next_sequence() == 46
    finally:
        reopened.close()


def test_acks_and_marks_on_a_full_disk_do_not_resend_or_fail(small_disk: SmallDisk) -> None:
    box = Outbox(small_disk.path / "outbox.sqlite3")
    try:
        rows = [box.add("t/st/result", {"n": n, "pad": "y" * 1000}) for n in range(3)]
        small_disk.fill()
        for mid, row in enumerate(rows, start=1):
            box.mark_inflight(row, mid)
        assert box.pending(10) == [] and box.inflight_count() == 3
        assert [box.ack(mid) for mid in (1, 2, 3)] == rows
        assert box.pending(10) == [] and box.stats().depth == 0
        small_disk.free()
        time.sleep(RETRY_S + 0.1)
        box.add("t/st/result", {"n": 3})
        assert [json.loads(e.payload)["n"] for e in box.pending(10)] == [3]
    finally:
        box.close()
    with sqlite3.connect(str(small_disk.path / "outbox.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1, "the deletions were written later"
    os.sync()


def test_damage_found_while_running_replaces_the_database_and_numbering_goes_on(db_path: Path) -> None:
    box = Outbox(db_path)
    try:
        for _ in range(300):
            box.add("t/st/result", {"sequence": box.next_sequence(), "pad": "z" * 300})
        with sqlite3.connect(str(db_path)) as other:  # everything into the main file, then damage it under the box
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rng = random.Random(7)
        with open(db_path, "r+b") as fh:
            for page in rng.sample(range(3, db_path.stat().st_size // 4096), 8):
                fh.seek(page * 4096)
                fh.write(rng.randbytes(4096))
        box._db.execute("PRAGMA cache_size=0")  # noqa: SLF001 - drop the page cache, as a long run would
        entries = box.pending(10_000)  # reading finds the damage: no DatabaseError escapes
        assert kept_copies(db_path) and any(i.severity == "critical" for i in box.take_incidents())
        assert 0 < len(entries) <= 300 and box.next_sequence() == 301
        box.add("t/st/result", {"sequence": 301})
        assert box.stats().depth == len(entries) + 1
    finally:
        box.close()

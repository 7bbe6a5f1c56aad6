"""The real daemon with its outbox on a disk that fills up (a real tmpfs) or a database that was damaged
or emptied between two runs: it keeps measuring, raises a storage_fault alarm, shows the fault in health,
loses no result and never reuses a sequence number.
"""

from pathlib import Path

import pytest

from systemd.conftest import NotifyReceiver

from .conftest import (
    OutboxFile,
    assert_in_order_duplicates_only_as_replays,
    health_docs,
    recorder_for,
    results,
    sequences,
    wait_until,
)
from .disk import SmallDisk

pytestmark = pytest.mark.timeout(150)  # each wait inside is bounded too; this bounds the whole test


def alarms(rec, bench, kind: str = "storage_fault"):
    return [d for d in rec.payloads(f"{bench.topic_base}/alarm") if d and d["kind"] == kind]


def test_a_full_disk_raises_an_alarm_holds_results_and_loses_none(make_bench, private_broker, tmp_path: Path,
                                                                  monkeypatch) -> None:
    disk = SmallDisk(tmp_path / "disk", size_kib=1024)
    notify = NotifyReceiver(abstract=True)  # what systemd would show in `systemctl status`
    monkeypatch.setenv("NOTIFY_SOCKET", notify.notify_socket)
    try:
        bench = make_bench(private_broker, kind="disk", interval_s=0.3,
                           extra_config=f'\n[outbox]\npath = "{disk.path}/outbox.sqlite3"\n')
        rec = recorder_for(private_broker, bench, topics=("result", "alarm", "health"))
        try:
            bench.start_station()
            wait_until(lambda: len(results(rec, bench)) >= 3, 60, "results before the disk fills", bench)
            disk.fill()
            wait_until(lambda: any(a["severity"] == "critical" for a in alarms(rec, bench)), 30,
                       "a critical storage_fault alarm", bench)
            wait_until(lambda: any(d["outbox"].get("storage_fault") and d["outbox"]["held"] > 0
                                   for d in health_docs(rec, bench)), 30, "health showing the fault", bench)
            notify.wait_for(lambda f: "STORAGE FAULT" in f.get("STATUS", ""), 20, "STATUS= naming the storage fault")
            bench.wait_alive(2.0)  # measuring on, results held in memory
            disk.free()
            wait_until(lambda: any(d["outbox"].get("held") == 0 and d["outbox"].get("storage_fault") is None
                                   for d in health_docs(rec, bench)[-1:]), 30, "health after space returns", bench)
            notify.wait_for(lambda f: "STATUS" in f and "STORAGE FAULT" not in f["STATUS"], 20,
                            "STATUS= without the fault once space returned")
            assert bench.stop_station() == 0, bench.log_tail()
            taken = OutboxFile(disk.path / "outbox.sqlite3").counter("sequence")
            wait_until(lambda: taken in sequences(results(rec, bench)), 15, "the results held meanwhile")
            docs = results(rec, bench)
            assert set(sequences(docs)) == set(range(1, taken + 1)), "every result arrived"
            assert_in_order_duplicates_only_as_replays(docs)
            log = bench.log_tail(chars=10**6)
            assert "Traceback" not in log and "disk is full" in log, log[-3000:]
        finally:
            rec.close()
    finally:
        notify.close()
        disk.unmount()


@pytest.mark.parametrize("damage", ["header", "emptied"])
def test_a_damaged_or_emptied_outbox_is_replaced_and_the_sequence_goes_on(make_bench, private_broker,
                                                                          damage: str) -> None:
    bench = make_bench(private_broker, kind=f"db-{damage}", interval_s=0.3)
    outbox = OutboxFile(bench.outbox_path)
    rec = recorder_for(private_broker, bench, topics=("result", "alarm"))
    try:
        bench.start_station()
        wait_until(lambda: len(results(rec, bench)) >= 3, 60, "results of the first run", bench)
        assert bench.stop_station() == 0, bench.log_tail()
        last = outbox.counter("sequence")
        if damage == "header":
            with open(bench.outbox_path, "r+b") as fh:
                fh.write(b"\xde\xad" * 64)
        else:
            for extra in ("-wal", "-shm"):
                Path(str(bench.outbox_path) + extra).unlink(missing_ok=True)
            bench.outbox_path.write_bytes(b"")
        bench.start_station()
        wait_until(lambda: any(s > last for s in sequences(results(rec, bench))), 60, "results of the second run",
                   bench)
        wait_until(lambda: alarms(rec, bench), 20, "a storage_fault alarm", bench)
        second = [s for s in sequences(results(rec, bench)) if s > last]
        assert second[0] > last and len(set(sequences(results(rec, bench)))) == len(results(rec, bench))
        severities = {a["severity"] for a in alarms(rec, bench)}
        assert ("critical" in severities) == (damage == "header"), severities
        kept = [p for p in bench.outbox_path.parent.glob("outbox.sqlite3.corrupt-*")
                if p.name[-4:] not in ("-wal", "-shm")]
        assert len(kept) == (damage == "header"), kept
        assert "Traceback" not in bench.log_tail(chars=10**6)
    finally:
        rec.close()

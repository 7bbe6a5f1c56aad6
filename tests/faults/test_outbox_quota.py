"""A long broker outage fills the outbox's disk quota: the oldest results are dropped, counted, logged,
reported in health and by one storage_fault alarm (alarms themselves are never dropped), and everything
newer still arrives, in order, once the broker is back.

The quota is set tiny (`outbox.quota_mb = 0.02`, about 25 results) so "long" takes seconds.
"""

import pytest

from .conftest import (
    OutboxFile,
    assert_in_order_duplicates_only_as_replays,
    health_docs,
    recorder_for,
    results,
    sequences,
    wait_until,
)

pytestmark = pytest.mark.timeout(150)  # each wait inside is bounded too; this bounds the whole test


def test_quota_full_drops_the_oldest_counts_and_reports_it(make_bench, persistent_broker) -> None:
    broker = persistent_broker
    bench = make_bench(broker, kind="quota", interval_s=0.2, extra_config="\n[outbox]\nquota_mb = 0.02\n")
    outbox = OutboxFile(bench.outbox_path)
    rec = recorder_for(broker, bench, topics=("result", "health", "alarm"))
    try:
        broker.stop()
        bench.start_station()
        wait_until(lambda: outbox.counter("dropped") >= 10, 60, "the quota to overflow", bench)
        broker.start()
        wait_until(lambda: any(d["outbox"]["dropped_total"] >= 10 for d in health_docs(rec, bench)), 45,
                   "health reporting the dropped results", bench)
        reconnected_at = outbox.counter("sequence")
        wait_until(lambda: reconnected_at in sequences(results(rec, bench)), 30, "the stored results", bench)
        assert bench.stop_station() == 0, bench.log_tail()
        taken, dropped = outbox.counter("sequence"), outbox.counter("dropped")
        wait_until(lambda: taken in sequences(results(rec, bench)), 10, "the results flushed at stop")
        docs = results(rec, bench)
        assert set(sequences(docs)) == set(range(dropped + 1, taken + 1)), (
            f"expected exactly the {taken - dropped} newest of {taken} results after dropping {dropped}")
        assert_in_order_duplicates_only_as_replays(docs)
        assert "outbox quota" in bench.log_tail(chars=10**6) and "dropped" in bench.log_tail(chars=10**6)
        quota_alarms = [a for a in rec.payloads(f"{bench.topic_base}/alarm")
                        if a and a["kind"] == "storage_fault" and "quota" in a["message"]]
        assert len(quota_alarms) == 1 and quota_alarms[0]["details"]["dropped"] >= 1, "one alarm per episode"
        last = health_docs(rec, bench)[-1]["outbox"]
        assert 10 <= last["dropped_total"] <= dropped and last["quota_bytes"] == int(0.02 * 1024 * 1024)
    finally:
        rec.close()

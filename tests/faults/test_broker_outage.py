"""The broker goes away mid-stream and comes back: the daemon keeps measuring into its outbox, and
afterwards every result has arrived, in order, with duplicates only as flagged replays.

The outage lasts `ISIC_FAULT_OUTAGE_S` seconds (default 15, to keep CI short); the full minute of
the issue runs with the soak tests (`make soak`, marker `soak`).
"""

import os
import time

import pytest

from .conftest import (
    OutboxFile,
    assert_in_order_duplicates_only_as_replays,
    recorder_for,
    results,
    sequences,
    wait_until,
)

pytestmark = pytest.mark.timeout(240)  # each wait inside is bounded too; this bounds the whole test

OUTAGE_S = float(os.environ.get("ISIC_FAULT_OUTAGE_S", "15"))
INTERVAL_S = 0.3
# The link's reconnect backoff grows to 30 s (MqttSettings.reconnect_max_s) during a long outage.
RECONNECT_S = 45.0


def outage(make_bench, broker, outage_s: float) -> None:
    bench = make_bench(broker, kind="outage", interval_s=INTERVAL_S)
    outbox = OutboxFile(bench.outbox_path)
    rec = recorder_for(broker, bench)
    try:
        bench.start_station()
        wait_until(lambda: len(results(rec, bench)) >= 5, 60, "the first results", bench)
        broker.stop()
        stopped = outbox.counter("sequence")
        bench.wait_alive(outage_s)
        during = outbox.counter("sequence") - stopped
        assert during >= 0.5 * outage_s / INTERVAL_S, f"only {during} results taken during a {outage_s} s outage"
        assert len(outbox.stored_sequences()) >= during, "results taken during the outage are not in the outbox"
        broker.start()
        restarted_at, restarted = time.monotonic(), outbox.counter("sequence")
        wait_until(lambda: set(range(1, restarted + 1)) <= set(sequences(results(rec, bench))), RECONNECT_S,
                   "every result of the outage after the broker returned", bench)
        print(f"\noutage {outage_s:g} s: {during} results taken meanwhile, all delivered "
              f"{time.monotonic() - restarted_at:.1f} s after the broker returned")
        assert bench.stop_station() == 0, bench.log_tail()
        taken = outbox.counter("sequence")
        assert outbox.stored_sequences() == [], "the outbox did not drain at a clean stop"
        wait_until(lambda: set(sequences(results(rec, bench))) >= set(range(1, taken + 1)), 10,
                   "the results flushed at stop")
        docs = results(rec, bench)
        assert set(sequences(docs)) == set(range(1, taken + 1)), "a result was lost or invented"
        assert_in_order_duplicates_only_as_replays(docs)
        replayed = {d["sequence"] for d in docs if d["replayed"]}
        assert replayed >= set(range(stopped + 2, stopped + during)), "results of the outage were not replayed"
    finally:
        rec.close()


def test_broker_stopped_mid_stream_and_restarted_loses_nothing(make_bench, persistent_broker) -> None:
    outage(make_bench, persistent_broker, OUTAGE_S)


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_broker_stopped_for_a_minute(make_bench, persistent_broker) -> None:
    outage(make_bench, persistent_broker, 60.0)

"""The daemon is killed with SIGKILL mid-stream (power cut, OOM killer) and started again: every result
that reached the outbox arrives, and sequence numbers continue where they stopped.

To make the kill land on results that are stored but not yet acknowledged, the broker is frozen with
SIGSTOP for a moment first (it takes the bytes and answers nothing), so results pile up in the outbox
and in flight; it is thawed after the kill, so what it already had may also arrive, as a duplicate
that the restarted station then replays (flagged).
"""

import signal

import pytest

from .conftest import (
    OutboxFile,
    assert_in_order_duplicates_only_as_replays,
    recorder_for,
    results,
    sequences,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)  # each wait inside is bounded too; this bounds the whole test


def test_sigkill_mid_stream_loses_nothing_from_the_outbox_and_sequences_continue(make_bench, private_broker) -> None:
    bench = make_bench(private_broker, kind="kill", interval_s=0.3)
    outbox = OutboxFile(bench.outbox_path)
    rec = recorder_for(private_broker, bench, persistent=False)
    try:
        station = bench.start_station()
        wait_until(lambda: len(results(rec, bench)) >= 5, 60, "the first results", bench)
        private_broker.process.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: len(outbox.stored_sequences()) >= 4, 20, "results waiting in the outbox", bench)
            station.send_signal(signal.SIGKILL)
            assert station.wait(10) == -signal.SIGKILL
            bench.station = None
        finally:
            private_broker.process.send_signal(signal.SIGCONT)
        stored = outbox.stored_sequences()
        last_taken = outbox.counter("sequence")
        assert stored, "nothing was waiting in the outbox at the kill"
        bench.start_station()
        wait_until(lambda: set(stored) <= set(sequences(results(rec, bench)))
                   and max(sequences(results(rec, bench))) > last_taken + 2, 60,
                   "the stored results and new ones after the restart", bench)
        assert bench.stop_station() == 0, bench.log_tail()
        docs = results(rec, bench)
        got = set(sequences(docs))
        assert set(stored) <= got, f"lost from the outbox: {sorted(set(stored) - got)}"
        # a sequence number may have been taken just before the kill without its result being stored
        assert set(range(1, last_taken + 1)) - got <= {last_taken}, "a result before the kill is missing"
        after = sorted(s for s in got if s > last_taken)
        assert after[0] == last_taken + 1, f"sequence numbers did not continue after {last_taken}: {after[:5]}"
        assert after == list(range(last_taken + 1, after[-1] + 1))
        assert_in_order_duplicates_only_as_replays(docs)
        replayed = {d["sequence"] for d in docs if d["replayed"]}
        assert set(stored) <= replayed, "the restarted station did not replay what it had stored"
    finally:
        rec.close()

"""The serial line misbehaves under the running daemon: garbage before every reply, a vanishing port,
bad checksums, NACKs and lost replies. The daemon stays up, resynchronises, reconnects when the port
returns, and says so in its health document.

Resynchronisation "within one frame" is checked the strict way: with garbage in front of *every* reply
(`--fault garbage=1`), no request may need a second attempt (the driver logs each retry), so each
reply right after the garbage was found at once. Reconnection is timed from the moment the port
returns to the first new result (an upper bound: it includes one acquisition and inference).
"""

import re
import time

import pytest

from .conftest import health_docs, recorder_for, results, sequences, wait_until

pytestmark = pytest.mark.timeout(180)  # each wait inside is bounded too; this bounds the whole test

RETRY_LINE = re.compile(r"retrying 0x[0-9a-f]{8} \(attempt \d+\)")
UNPLUGGED_S = 6.0  # longer than the 5 s health interval of the bench, so one health document sees it
RECONNECT_TARGET_S = 5.0


def spectrometer_states(docs):
    return [d["devices"]["spectrometer"] for d in docs if "spectrometer" in d.get("devices", {})]


def test_garbage_vanishing_port_checksums_and_nacks(make_bench, private_broker) -> None:
    bench = make_bench(private_broker, kind="serial", interval_s=0.3, faults=["garbage=1"])
    rec = recorder_for(private_broker, bench, topics=("result", "health"), persistent=False)
    try:
        bench.start_station()
        # 1. garbage before every reply: results at the configured rate, not one retried request
        wait_until(lambda: len(results(rec, bench)) >= 8, 60, "results with garbage before every reply", bench)
        retries = RETRY_LINE.findall(bench.log_tail(chars=10**6))
        assert retries == [], f"the driver needed retries after garbage: {retries[:3]}"
        wait_until(lambda: any(s["link_errors"]["discarded_bytes"] > 0
                               for s in spectrometer_states(health_docs(rec, bench))), 15,
                   "health counting the garbage thrown away", bench)

        # 2. the port vanishes (cable pulled) and returns: the station stays up and reconnects
        bench.unplug_spectrometer()
        before = max(sequences(results(rec, bench)))
        health_before = len(health_docs(rec, bench))
        bench.wait_alive(UNPLUGGED_S)
        plugged_at = bench.plug_spectrometer(faults=[])
        wait_until(lambda: max(sequences(results(rec, bench))) > before + 1, 30, "results after the port returned",
                   bench)

        reconnect_s = time.monotonic() - plugged_at
        print(f"\nreconnect: first new result {reconnect_s:.2f} s after the port returned")
        states = spectrometer_states(health_docs(rec, bench)[health_before:])
        assert any(s["state"] == "disconnected" for s in states), f"health never showed the port gone: {states}"
        wait_until(lambda: any(s["state"] == "ok" and s["reconnects"] >= 1
                               for s in spectrometer_states(health_docs(rec, bench))), 15,
                   "health showing the spectrometer reconnected", bench)

        # 3. bad checksums, NACKs and lost replies: retried, and results keep coming
        bench.unplug_spectrometer()
        bench.plug_spectrometer(faults=["checksum=0.05", "nack=0.1", "drop=0.02"])
        count = len(results(rec, bench))
        wait_until(lambda: len(results(rec, bench)) >= count + 8, 90, "results through checksum/NACK faults", bench)
        assert RETRY_LINE.search(bench.log_tail(chars=10**6)), "no request was retried: were the faults on?"
        wait_until(lambda: any(s["link_errors"]["retried_requests"] > 0 and s["link_errors"]["checksum_failures"] > 0
                               for s in spectrometer_states(health_docs(rec, bench))), 15,
                   "health counting retried requests and bad checksums", bench)
        wait_until(lambda: any(s["state"] == "ok" and s["reconnects"] >= 2
                               for s in spectrometer_states(health_docs(rec, bench))), 15,
                   "health counting the second reconnect", bench)
        assert bench.stop_station() == 0, bench.log_tail()
        assert reconnect_s <= 3 * RECONNECT_TARGET_S, f"reconnected only {reconnect_s:.1f} s after the port returned"
    finally:
        rec.close()

"""The microscope is unplugged under the running daemon: results continue as signal-only, flagged
`missing_image` and `signal_only`; when the camera returns, images are back (bimodal results again;
a frame can still fail the quality gate for its own reasons, which is flagged differently) and the health
document shows the camera lost and then reconnected.

The virtual microscope's `unplug` fault makes the camera vanish at frame `fault_after` for `fault_s`
seconds (reads and opens fail), as a USB microscope pulled out and plugged back in.
"""

import pytest

from .conftest import health_docs, recorder_for, results, wait_until

pytestmark = pytest.mark.timeout(150)  # each wait inside is bounded too; this bounds the whole test

FRAMES_PER_MEASUREMENT = 3  # what DemoBench configures
UNPLUG_AFTER_FRAMES = 4 * FRAMES_PER_MEASUREMENT
UNPLUGGED_S = 8.0


def camera_states(docs):
    return [d["devices"]["camera"] for d in docs if "camera" in d.get("devices", {})]


def test_camera_lost_gives_flagged_signal_only_results_then_recovers(make_bench, private_broker) -> None:
    bench = make_bench(private_broker, kind="camera", interval_s=0.5, camera=True,
                       camera_options=f"fault=unplug&fault_after={UNPLUG_AFTER_FRAMES}&fault_s={UNPLUGGED_S}")
    rec = recorder_for(private_broker, bench, topics=("result", "health"), persistent=False)

    def lost(doc):
        return "missing_image" in doc["flags"]

    def recovered():
        flags = [lost(d) for d in results(rec, bench)]
        if True not in flags:
            return False
        after = results(rec, bench)[len(flags) - flags[::-1].index(True):]
        return len(after) >= 3 and any("signal_only" not in d["flags"] for d in after)

    try:
        bench.start_station()
        wait_until(lambda: any(lost(d) for d in results(rec, bench)), 60, "results without images", bench)
        wait_until(recovered, 60, "bimodal results after the camera returned", bench)
        docs = results(rec, bench)
        flags = [lost(d) for d in docs]
        first_lost, last_lost = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
        listing = "; ".join(",".join(d["flags"]) or "-" for d in docs)
        assert first_lost >= 1, f"images were missing before the camera was unplugged: {listing}"
        assert all(flags[first_lost:last_lost + 1]), f"the camera came back in the middle of the outage: {listing}"
        assert all("signal_only" in d["flags"] for d in docs[first_lost:last_lost + 1]), listing
        assert last_lost - first_lost + 1 >= 2, f"the camera outage should span several results: {listing}"
        wait_until(lambda: any(s["state"] == "ok" and s["reconnects"] >= 1
                               for s in camera_states(health_docs(rec, bench))), 15,
                   "health showing the camera reconnected", bench)
        states = camera_states(health_docs(rec, bench))
        assert any(s["state"] == "disconnected" for s in states), f"health never showed the camera gone: {states}"
        assert bench.stop_station() == 0, bench.log_tail()
    finally:
        rec.close()

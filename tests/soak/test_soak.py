"""The soak: the real daemon (`isic-station run`) for about ten minutes on the demo bench, with a little
line noise on the serial link, while its resident memory, open file descriptors and threads are sampled
from /proc/<pid>. They must stay flat: RSS growth at most 5 % after the warm-up, no descriptor or thread
leak, and results keep arriving without a gap.

Run on demand (`make soak`: marker `soak`, excluded from CI by the default `-m 'not soak'`).
`ISIC_SOAK_S` sets the sampled duration (default 600 s) after a `ISIC_SOAK_WARMUP_S` warm-up (60 s).
"""

import os
import statistics
import time
from pathlib import Path
from typing import Dict, List

import pytest

from faults.conftest import recorder_for, results, sequences, wait_until

SOAK_S = float(os.environ.get("ISIC_SOAK_S", "600"))
WARMUP_S = float(os.environ.get("ISIC_SOAK_WARMUP_S", "60"))
SAMPLE_EVERY_S = 10.0
MAX_RSS_GROWTH = 0.05
INTERVAL_S = 0.25


def proc_figures(pid: int) -> Dict[str, float]:
    """RSS (MiB), open file descriptors and threads of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024.0,
            "fds": float(len(os.listdir(f"/proc/{pid}/fd"))),
            "threads": float(fields["Threads"].strip())}


def settled(samples: List[Dict[str, float]], key: str) -> float:
    """Median of three samples: one odd reading (a GC pause, a reconnect in progress) is not a trend."""
    return statistics.median(s[key] for s in samples)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_S + WARMUP_S + 300)
def test_rss_fds_and_threads_stay_flat(make_bench, private_broker) -> None:
    bench = make_bench(private_broker, kind="soak", interval_s=INTERVAL_S, camera=True,
                       faults=["garbage=0.01", "nack=0.01"])
    rec = recorder_for(private_broker, bench, persistent=False)
    try:
        station = bench.start_station()
        wait_until(lambda: len(results(rec, bench)) >= 5, 60, "the first results", bench)
        bench.wait_alive(WARMUP_S)
        samples = []
        started = time.monotonic()
        while time.monotonic() - started < SOAK_S:
            samples.append(proc_figures(station.pid))
            bench.wait_alive(SAMPLE_EVERY_S)
        samples.append(proc_figures(station.pid))
        count = len(results(rec, bench))
        assert bench.stop_station() == 0, bench.log_tail()
        first, last = samples[:3], samples[-3:]
        rss0, rss1 = settled(first, "rss_mib"), settled(last, "rss_mib")
        print(f"\nsoak: {SOAK_S:.0f} s after {WARMUP_S:.0f} s warm-up, {count} results; "
              f"RSS {rss0:.1f} -> {rss1:.1f} MiB ({100 * (rss1 / rss0 - 1):+.2f} %), max "
              f"{max(s['rss_mib'] for s in samples):.1f} MiB; fds {settled(first, 'fds'):.0f} -> "
              f"{settled(last, 'fds'):.0f}; threads {settled(first, 'threads'):.0f} -> {settled(last, 'threads'):.0f}")
        assert rss1 <= rss0 * (1 + MAX_RSS_GROWTH), f"RSS grew from {rss0:.1f} to {rss1:.1f} MiB"
        assert settled(last, "fds") <= settled(first, "fds") + 2, [s["fds"] for s in samples]
        assert settled(last, "threads") <= settled(first, "threads") + 1, [s["threads"] for s in samples]
        got = sequences(results(rec, bench))
        assert set(got) == set(range(1, max(got) + 1)), "a result went missing during the soak"
        assert count >= 0.5 * (SOAK_S + WARMUP_S) / INTERVAL_S, f"only {count} results: the station fell behind"
    finally:
        rec.close()

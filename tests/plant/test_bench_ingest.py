"""The ingest bench itself, small: simulated stations, a private persistent Mosquitto, two collector
processes, one killed with SIGKILL and restarted mid-run: nothing lost, nothing doubled."""

from isic_plant.bench_ingest import run_ingest_bench


def test_a_killed_collector_loses_and_doubles_nothing():
    figures = run_ingest_bench(stations=4, seconds=4.0, rate=50, kill_collector=True, restart_broker=False,
                               progress=False)
    assert figures["published"] >= 600
    assert figures["stored"] == figures["published"]
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["rejected"] == 0
    assert any("killed" in e for e in figures["disruptions"]) and any("restarted" in e for e in figures["disruptions"])
    assert figures["publish_to_row_ms_p50"] is not None and figures["audit_chain_ok"]

"""`isic-station bench pipeline`: the whole station on emulated devices at their fastest, and what it costs.

Set-up: the bench of `isic-station demo` (`DemoBench`: the emulated OBP spectrometer in its own process on
a pseudo-terminal, without faults; the virtual microscope; the local Mosquitto, or one started on a free
port; dark and white references taken with `isic-station calibrate`), and the station itself in this
process: the daemon's own `Station`, started from the bench's config, in continuous mode with an interval
so short that every tick is due at once, i.e. acquisition runs back to back (as fast as the serial link
and the camera deliver) and inference and MQTT follow. Nothing here is a second pipeline: the figures
come from the station's own hooks.

Figures (over `--seconds` after a short warm-up; `--json` prints them as one object with exactly the keys
`acquisition_ms`, `overhead_ms`, `processed_fraction`, `cpu_ms_per_result`, `rss_mb`):
- `acquisition_ms` {p50, p99}: the acquisition itself (co-added scans over the serial link, frames),
  from the pipeline's own statistics;
- `overhead_ms` {p50, p99}: time-to-result beyond acquisition, trigger to the broker's PUBACK minus the
  acquisition time, from the station's `TimeToResult` (fed by `MqttLink`'s `on_delivered` at PUBACK):
  queueing, preprocessing, inference, the fsync'd outbox write and the MQTT round trip;
- `processed_fraction`: of the raw spectra the serial link carried during the run, the share that went
  into a published result (counted at the station's spectrometer; the run ends with the station's own
  clean stop, which finishes every measurement already taken);
- `cpu_ms_per_result`: CPU time of this process (station threads, paho, the model) per result in the
  window; the emulator and the broker are other processes, as on a board. The virtual microscope renders
  its frames inside this process (a real camera's driver and decoder would), so CPU and RSS include it;
- `rss_mb`: resident memory of this process at the end of the window, MiB.
The continuous-mode "skipped ticks" warning is expected at this rate and silenced.
"""

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

from isic_station.errors import DeviceError, ModelError, StationError

# An interval this short makes every continuous-mode tick due at once: acquisition runs back to back.
BACK_TO_BACK_INTERVAL_S = 0.001
WARMUP_RESULTS = 5
STARTUP_TIMEOUT_S = 60.0


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench pipeline`."""
    parser = subparsers.add_parser(
        "pipeline", help="the station on emulated devices at full speed: time-to-result, spectra processed, CPU, RSS",
        description="Run the station (the daemon's own Station object) on the emulated spectrometer and the virtual "
                    "microscope at their fastest, publishing to the local broker, and report acquisition time and "
                    "time-to-result beyond it (p50/p99), the fraction of the spectra the serial link carried that "
                    "were processed, CPU time per result and resident memory.")
    parser.add_argument("--seconds", type=float, default=30.0, metavar="S",
                        help="measuring window after the warm-up (default 30)")
    parser.add_argument("--model", type=Path, metavar="MANIFEST",
                        help="model manifest to run (default: the shipped model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run)


def _counting_station_class() -> Any:
    from isic_station.station import Station

    class CountingStation(Station):
        """The daemon's Station, counting the raw spectra its spectrometer reads over the serial link."""

        spectra_carried = 0

        def _open_devices(self, camera: bool = True) -> None:
            super()._open_devices(camera)
            spectrometer = self.acquirer.spectrometer
            read_spectrum = spectrometer.raw_spectrum

            def counted() -> Any:
                counts = read_spectrum()
                self.spectra_carried += 1
                return counts

            spectrometer.raw_spectrum = counted  # co-adding calls it once per scan

    return CountingStation


def _wait_results(station: Any, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while station.pipeline.stats.snapshot()["counts"]["results"] < count:
        if time.monotonic() > deadline:
            raise DeviceError(f"the station gave fewer than {count} results within {timeout_s:.0f} s "
                              f"(pipeline: {station.pipeline.stats.snapshot()['counts']})")
        time.sleep(0.1)


def measure(seconds: float, model: Optional[Path], workdir: Path) -> Dict[str, Any]:
    """Run the bench for `seconds` after the warm-up; the figures (see the module docstring) plus context."""
    from isic_station.config import load_config
    from isic_station.demo import DemoBench, process_figures
    from isic_station.sd_notify import ServiceNotifier

    with DemoBench(workdir, station_id=f"bench-pipeline-{os.getpid()}", mode="continuous",
                   interval_s=BACK_TO_BACK_INTERVAL_S, model=model, log_level="WARNING", camera=True) as bench:
        bench.calibrate()
        bench.put_line(seed=1, dwell_s=1.0)
        config = load_config(bench.config_path)
        logging.getLogger("isic_station.pipeline").setLevel(logging.ERROR)  # skipped ticks: expected here
        station = _counting_station_class()(config, notifier=ServiceNotifier(None))
        try:
            station.start()
            if not station.link.wait_connected(10.0):
                raise DeviceError(f"no MQTT broker answered on {bench.broker.host}:{bench.broker.port}")
            _wait_results(station, WARMUP_RESULTS, STARTUP_TIMEOUT_S)
            model_in_use = station.cmd_status({})["model"]
            ttr = station.time_to_result
            del ttr.samples_ms[:]  # the window starts now (list operations are atomic)
            results_before = station.pipeline.stats.snapshot()["counts"]["results"]
            cpu_before = time.process_time()
            time.sleep(seconds)
            cpu_s = time.process_time() - cpu_before
            snapshot = station.pipeline.stats.snapshot()
            overhead = ttr.summary()
            rss_mib = process_figures(os.getpid())["rss_mib"]
            results = snapshot["counts"]["results"] - results_before
        finally:
            station.stop(flush_timeout_s=10.0)
        carried = station.spectra_carried
        processed = station.pipeline.stats.snapshot()["counts"]["results"] * config.spectrometer.coadd
        context = {"results": results, "seconds": seconds, "spectra_carried": carried, "spectra_processed": processed,
                   "coadd": config.spectrometer.coadd, "frames": config.camera.frames_per_measurement,
                   "model": f"{model_in_use['name']} {model_in_use['version']}",
                   "broker": f"{bench.broker.host}:{bench.broker.port}"}
    if results < 2 or overhead["n"] < 2:
        raise DeviceError(f"only {results} results ({overhead['n']} acknowledged) in {seconds:g} s: too few to report")

    def rounded(figures: Dict[str, Any]) -> Dict[str, float]:
        return {"p50": round(figures["p50"], 2), "p99": round(figures["p99"], 2)}

    figures = {
        "acquisition_ms": rounded(snapshot["acquire_ms"]),
        "overhead_ms": rounded(overhead),
        "processed_fraction": round(processed / carried, 4) if carried else 0.0,
        "cpu_ms_per_result": round(cpu_s * 1000.0 / results, 2),
        "rss_mb": round(rss_mib, 1),
    }
    return {"figures": figures, "context": context}


def run(args: argparse.Namespace) -> int:
    """Print the figures (text, or one JSON object with --json)."""
    from isic_station.logging_setup import setup_logging

    if args.seconds <= 0:
        raise StationError(f"--seconds {args.seconds}: expected a positive number of seconds")
    if args.model is None:
        from isic_model import SHIPPED_MANIFEST

        if not Path(SHIPPED_MANIFEST).is_file():
            raise ModelError(f"no shipped model at {SHIPPED_MANIFEST} yet; give one with --model MANIFEST "
                             "(e.g. written by `isic-model export`)")
    elif not args.model.is_file():
        raise ModelError(f"--model {args.model}: no such manifest file")
    setup_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="isic-bench-pipeline-"))
    try:
        measured = measure(args.seconds, args.model.resolve() if args.model else None, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures, context = measured["figures"], measured["context"]
    if args.json:
        print(json.dumps(figures))
        return 0
    acq, over = figures["acquisition_ms"], figures["overhead_ms"]
    print(f"bench pipeline: {context['results']} results in {context['seconds']:g} s back to back "
          f"({context['coadd']} co-added scans + {context['frames']} frames each), model {context['model']}, "
          f"broker {context['broker']}")
    print(f"  acquisition:                          p50 {acq['p50']:.1f} ms, p99 {acq['p99']:.1f} ms")
    print(f"  time-to-result beyond acquisition:    p50 {over['p50']:.1f} ms, p99 {over['p99']:.1f} ms "
          f"(trigger to PUBACK minus acquisition)")
    print(f"  spectra carried by the serial link:   {context['spectra_carried']}, processed "
          f"{context['spectra_processed']} ({100.0 * figures['processed_fraction']:.2f} %)")
    print(f"  CPU per result:                       {figures['cpu_ms_per_result']:.1f} ms")
    print(f"  resident memory:                      {figures['rss_mb']:.1f} MiB")
    return 0

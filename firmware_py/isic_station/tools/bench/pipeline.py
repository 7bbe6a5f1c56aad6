"""`isic-station bench pipeline`: the whole station on emulated devices back to back, and what it costs.

Set-up: the bench of `isic-station demo` (`DemoBench`: the emulated OBP spectrometer in its own process on
a pseudo-terminal, without faults; the virtual microscope; the local Mosquitto, or one started on a free
port; dark and white references taken with `isic-station calibrate`), and the station itself in this
process: the daemon's own `Station`, started from the bench's config, in continuous mode with an interval
so short that every tick is due at once, i.e. acquisition runs back to back (as fast as the serial link
and the camera deliver) and inference and MQTT follow. Nothing here is a second pipeline: the figures
come from the station's own hooks.

The emulated instrument keeps the line's real clock (its replies paced at the configured baud rate, 8N1,
after integrating), and the virtual microscope delivers frames at the configured fps, so acquisition
can be held against what the devices allow. `--settings FILE` takes the measurement settings from a TOML
file's [spectrometer] (baud, timeout_s, integration_us, coadd) and [camera] (width, height, fps,
um_per_px, frames_per_measurement) tables — `config/settings/production-settings.toml` holds the production ones
(16 scans, 16 frames), and a station's own config file works too (its ports and sources are not used).

Figures (over `--seconds` after a short warm-up; `--json` prints them as one object with the keys
`acquisition_ms`, `physical_limit_ms`, `overhead_ms`, `processed_fraction`, `cpu_ms_per_result`, `rss_mb`,
`results_per_minute`):
- `acquisition_ms` {p50, p99}: the acquisition itself (spectrum over the serial link and frames, taken
  at the same time), from the pipeline's own statistics;
- `physical_limit_ms`: the shortest a measurement can take with these settings, computed from the
  station's own config and its instrument: max(scans x integration time + the spectrum transfers at the
  link's baud rate, frames / fps); one transfer (request and reply) when the instrument averages the
  scans itself, one per scan when the station co-adds them. Acquisition above it is the station's own;
- `overhead_ms` {p50, p99}: time-to-result beyond acquisition, trigger to the broker's PUBACK minus the
  acquisition time, from the station's `TimeToResult` (fed by `MqttLink`'s `on_delivered` at PUBACK):
  queueing, preprocessing, inference, the fsync'd outbox write and the MQTT round trip;
- `processed_fraction`: of the raw spectra the serial link carried during the run, the share that went
  into a published result (counted by the station's own spectrometer, `ObpSpectrometer.spectra_read`;
  the run ends with the station's own clean stop, which finishes every measurement already taken);
- `cpu_ms_per_result`: CPU time of this process (station threads, paho, the model) per result in the
  window; the emulator and the broker are other processes, as on a board. The virtual microscope renders
  its frames inside this process (a real camera's driver and decoder would), so CPU and RSS include it;
- `rss_mb`: resident memory of this process at the end of the window, MiB;
- `results_per_minute`: results published per minute in the window (continuous mode, back to back).
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
from typing import TYPE_CHECKING, Any, Dict, Optional

import isic_model
from isic_common.errors import ConfigError, DeviceError, ModelError, StationError
from isic_drivers.obp.codec import MIN_FRAME_SIZE
from isic_drivers.obp.transport import line_seconds
from isic_station.daemon.logging_setup import setup_logging

if TYPE_CHECKING:
    from isic_station.daemon.station import Station

# An interval this short makes every continuous-mode tick due at once: acquisition runs back to back.
BACK_TO_BACK_INTERVAL_S = 0.001
WARMUP_RESULTS = 5
STARTUP_TIMEOUT_S = 60.0


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench pipeline`."""
    parser = subparsers.add_parser(
        "pipeline", help="the station on emulated devices back to back: acquisition vs its physical limit, "
                         "time-to-result, spectra processed, CPU, RSS",
        description="Run the station (the daemon's own Station object) on the emulated spectrometer (paced at its "
                    "baud rate) and the virtual microscope (at its fps) back to back, publishing to the local broker, "
                    "and report acquisition time against the physical limit of the settings, time-to-result beyond "
                    "it (p50/p99), the fraction of the spectra the serial link carried that were processed, CPU time "
                    "per result, resident memory and results per minute.")
    parser.add_argument("--seconds", type=float, default=30.0, metavar="S",
                        help="measuring window after the warm-up (default 30)")
    parser.add_argument("--model", type=Path, metavar="MANIFEST",
                        help="model manifest to run (default: the shipped model)")
    parser.add_argument("--settings", type=Path, metavar="TOML",
                        help="measurement settings from this file's [spectrometer] and [camera] tables, e.g. "
                             "config/settings/production-settings.toml (16 scans, 16 frames) or a station's config "
                             "(default: the demo's: 4 scans, 3 frames)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run)


# The [spectrometer] and [camera] keys `--settings` takes: what a measurement is, not where the devices are.
SETTING_KEYS = {
    "spectrometer": ("baud", "timeout_s", "integration_us", "coadd"),
    "camera": ("width", "height", "fps", "um_per_px", "frames_per_measurement"),
}


def load_settings(path: Path) -> Dict[str, Dict[str, Any]]:
    """The measurement settings in a TOML file (see SETTING_KEYS); ConfigError naming the file when it cannot
    be read or has none of them. Values are checked against the config schema when the bench's config loads."""
    from isic_station.config import tomllib  # the config (and jsonschema) load only when the bench runs

    try:
        with open(path, "rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--settings {path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--settings {path}: not valid TOML: {exc}") from None
    settings = {table: {key: document[table][key] for key in keys if key in document.get(table, {})}
                for table, keys in SETTING_KEYS.items() if isinstance(document.get(table), dict)}
    if not any(settings.values()):
        raise ConfigError(f"--settings {path}: no measurement settings in it; expected some of "
                          + "; ".join(f"[{table}] {', '.join(keys)}" for table, keys in SETTING_KEYS.items()))
    return settings


def physical_limit_ms(scans: int, integration_us: int, baud: int, pixels: int, averaged_on_instrument: bool,
                      frames: int, fps: float) -> float:
    """The shortest measurement the devices allow: max(spectrometer, camera) in ms (module docstring)."""
    exchange_s = line_seconds(MIN_FRAME_SIZE + MIN_FRAME_SIZE + 2 * pixels, baud)  # request, then the spectrum
    transfers = 1 if averaged_on_instrument else scans
    spectrometer_s = scans * integration_us / 1e6 + transfers * exchange_s
    camera_s = frames / fps if frames else 0.0
    return 1000.0 * max(spectrometer_s, camera_s)


def _wait_results(station: "Station", count: int, timeout_s: float) -> None:
    assert station.pipeline is not None
    deadline = time.monotonic() + timeout_s
    while station.pipeline.stats.snapshot()["counts"]["results"] < count:
        if time.monotonic() > deadline:
            raise DeviceError(f"the station gave fewer than {count} results within {timeout_s:.0f} s "
                              f"(pipeline: {station.pipeline.stats.snapshot()['counts']})")
        time.sleep(0.1)


def measure(seconds: float, model: Optional[Path], workdir: Path,
            settings: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Run the bench for `seconds` after the warm-up; the figures (see the module docstring) plus context."""
    # The station and its bench (OpenCV, paho, the model) load only when the bench runs: `--help` stays fast.
    from isic_station.config import load_config
    from isic_station.daemon.sd_notify import ServiceNotifier
    from isic_station.daemon.station import Station
    from isic_station.daemon.wiring import build_parts
    from isic_station.tools.demo import DemoBench, process_figures

    with DemoBench(workdir, station_id=f"bench-pipeline-{os.getpid()}", mode="continuous",
                   interval_s=BACK_TO_BACK_INTERVAL_S, model=model, log_level="WARNING", camera=True,
                   settings=settings) as bench:
        bench.calibrate()
        bench.put_line(seed=1, dwell_s=1.0)
        config = load_config(bench.config_path)
        logging.getLogger("isic_station.daemon.pipeline").setLevel(logging.ERROR)  # skipped ticks: expected here
        parts = build_parts(config)  # the daemon's own parts; the spectrometer counts the spectra it reads
        station = Station(config, parts, notifier=ServiceNotifier(None))
        try:
            station.start()
            assert station.link is not None and station.pipeline is not None and station.acquirer is not None
            if not station.link.wait_connected(10.0):
                raise DeviceError(f"no MQTT broker answered on {bench.broker.host}:{bench.broker.port}")
            _wait_results(station, WARMUP_RESULTS, STARTUP_TIMEOUT_S)
            model_in_use = station.commands.status({})["model"]
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
            on_instrument = bool(parts.spectrometer.averaging_supported) or config.spectrometer.coadd == 1
            limit_ms = physical_limit_ms(config.spectrometer.coadd, config.spectrometer.integration_us,
                                         config.spectrometer.baud, len(station.acquirer.wavelengths_nm),
                                         on_instrument, config.camera.frames_per_measurement, config.camera.fps)
        finally:
            station.stop(flush_timeout_s=10.0)
        carried = parts.spectrometer.spectra_read
        per_result = 1 if on_instrument else config.spectrometer.coadd  # transfers that went into one result
        processed = station.pipeline.stats.snapshot()["counts"]["results"] * per_result
        context = {"results": results, "seconds": seconds, "spectra_carried": carried, "spectra_processed": processed,
                   "coadd": config.spectrometer.coadd, "frames": config.camera.frames_per_measurement,
                   "averaging": "on the instrument" if on_instrument else "on the host",
                   "integration_us": config.spectrometer.integration_us, "baud": config.spectrometer.baud,
                   "fps": config.camera.fps,
                   "model": f"{model_in_use['name']} {model_in_use['version']}",
                   "broker": f"{bench.broker.host}:{bench.broker.port}"}
    if results < 2 or overhead["n"] < 2:
        raise DeviceError(f"only {results} results ({overhead['n']} acknowledged) in {seconds:g} s: too few to report")

    def rounded(figures: Dict[str, Any]) -> Dict[str, float]:
        return {"p50": round(figures["p50"], 2), "p99": round(figures["p99"], 2)}

    figures = {
        "acquisition_ms": rounded(snapshot["acquire_ms"]),
        "physical_limit_ms": round(limit_ms, 2),
        "overhead_ms": rounded(overhead),
        "processed_fraction": round(processed / carried, 4) if carried else 0.0,
        "cpu_ms_per_result": round(cpu_s * 1000.0 / results, 2),
        "rss_mb": round(rss_mib, 1),
        "results_per_minute": round(results * 60.0 / seconds, 1),
    }
    return {"figures": figures, "context": context}


def run(args: argparse.Namespace) -> int:
    """Print the figures (text, or one JSON object with --json)."""
    if args.seconds <= 0:
        raise StationError(f"--seconds {args.seconds}: expected a positive number of seconds")
    if args.model is None:
        if not Path(isic_model.SHIPPED_MANIFEST).is_file():
            raise ModelError(f"no shipped model at {isic_model.SHIPPED_MANIFEST} yet; give one with --model MANIFEST "
                             "(e.g. written by `isic-model export`)")
    elif not args.model.is_file():
        raise ModelError(f"--model {args.model}: no such manifest file")
    setup_logging("WARNING")
    settings = load_settings(args.settings) if args.settings else None
    workdir = Path(tempfile.mkdtemp(prefix="isic-bench-pipeline-"))
    try:
        measured = measure(args.seconds, args.model.resolve() if args.model else None, workdir, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures, context = measured["figures"], measured["context"]
    if args.json:
        print(json.dumps(figures))
        return 0
    acq, over = figures["acquisition_ms"], figures["overhead_ms"]
    limit = figures["physical_limit_ms"]
    print(f"bench pipeline: {context['results']} results in {context['seconds']:g} s back to back "
          f"({context['coadd']} scans of {context['integration_us']} us averaged {context['averaging']} at "
          f"{context['baud']} baud + {context['frames']} frames at {context['fps']:g} fps each), "
          f"model {context['model']}, broker {context['broker']}")
    print(f"  physical limit of one measurement:    {limit:.1f} ms (max of spectrometer and camera)")
    print(f"  acquisition:                          p50 {acq['p50']:.1f} ms, p99 {acq['p99']:.1f} ms "
          f"(p50 = {acq['p50'] / limit:.3f} x the limit)")
    print(f"  time-to-result beyond acquisition:    p50 {over['p50']:.1f} ms, p99 {over['p99']:.1f} ms "
          f"(trigger to PUBACK minus acquisition)")
    print(f"  spectra carried by the serial link:   {context['spectra_carried']}, processed "
          f"{context['spectra_processed']} ({100.0 * figures['processed_fraction']:.2f} %)")
    print(f"  CPU per result:                       {figures['cpu_ms_per_result']:.1f} ms")
    print(f"  resident memory:                      {figures['rss_mb']:.1f} MiB")
    print(f"  results per minute:                   {figures['results_per_minute']:.1f}")
    return 0

"""`isic-station run | demo | doctor | calibrate`: the daemon and the tools a technician runs beside it.

Heavy imports (OpenCV, ONNX Runtime, paho) stay inside the handlers so `--help` is instant.
"""

import argparse
from pathlib import Path

from isic_common.errors import ConfigError


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add the run, demo, doctor and calibrate sub-commands."""
    run = subparsers.add_parser(
        "run", help="run the station daemon in the foreground (what the systemd service starts)",
        description="Run the station: acquisition, inference and MQTT publishing until SIGTERM/SIGINT, then "
                    "stop cleanly, flushing the outbox for up to --flush-timeout seconds. A wrong config exits "
                    "with code 78 and one line naming the key.")
    run.add_argument("--config", required=True, type=Path, metavar="FILE", help="station config (TOML)")
    run.add_argument("--flush-timeout", type=float, default=10.0, metavar="S",
                     help="seconds to wait at shutdown for unsent results to reach the broker (default 10)")
    run.set_defaults(handler=_run)

    demo = subparsers.add_parser(
        "demo", help="the whole station on simulated devices with a live view of results over MQTT",
        description="Start the emulated spectrometer on a pseudo-terminal, the virtual microscope and a production "
                    "line of samples, use the local Mosquitto on 127.0.0.1:1883 (or start one on a free port), "
                    "calibrate, run the station and print each result as it arrives over MQTT.")
    demo.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    demo.add_argument("--count", type=int, metavar="N", help="stop after N results")
    demo.add_argument("--interval", type=float, default=1.0, metavar="S",
                      help="seconds between measurements (default 1.0)")
    demo.add_argument("--dwell", type=float, default=3.0, metavar="S",
                      help="seconds each sample stays under the probe on the simulated line (default 3.0)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the simulated production line (default 1)")
    demo.add_argument("--model", type=Path, metavar="MANIFEST",
                      help="model manifest to run (default: the shipped model)")
    demo.add_argument("--stats", action="store_true",
                      help="at the end print time-to-result p50/p99 (trigger to PUBACK minus acquisition) and the "
                           "station's RSS and CPU")
    demo.add_argument("--keep", type=Path, metavar="DIR",
                      help="work in DIR and keep it (config, outbox, calibration, logs) instead of a temp dir")
    demo.set_defaults(handler=_demo)

    doctor = subparsers.add_parser(
        "doctor", help="check serial port, camera, model, backend, broker and calibration; say what to fix",
        description="Check everything the configured station needs, one line per check (OK/FAIL) with what to do "
                    "about a failure. Exit code 0 when all pass, 69 otherwise. Stop the service first: it holds "
                    "the serial port.")
    doctor.add_argument("--config", required=True, type=Path, metavar="FILE", help="station config (TOML)")
    doctor.add_argument("--npu", action="store_true",
                        help="instead: run both graphs on the NPU and on ONNX Runtime with the same inputs and "
                             "compare them within an fp16 tolerance, one line per graph")
    doctor.set_defaults(handler=_doctor)

    calibrate = subparsers.add_parser(
        "calibrate", help="take a dark or white reference with the spectrometer",
        description="Take a dark reference (probe covered or lamp off) or a white reference (the white "
                    "reflectance tile under the probe) and store it in calibration.dir. Stop the service first; "
                    "while it runs, send the calibrate command over MQTT instead.")
    calibrate.add_argument("reference", choices=("dark", "white", "wavelength"),
                           help="which reference to take (wavelength: the wavelength reference tile, fits the axis)")
    calibrate.add_argument("--config", required=True, type=Path, metavar="FILE", help="station config (TOML)")
    calibrate.set_defaults(handler=_calibrate)


def _configured(path: Path):  # -> Config
    from isic_station.config import load_config
    from isic_station.daemon.logging_setup import setup_logging

    setup_logging("INFO")
    config = load_config(path)
    setup_logging(config.station.log_level)
    return config


def _run(args: argparse.Namespace) -> int:
    from isic_station.daemon.station import run_daemon

    if args.flush_timeout < 0:
        raise ConfigError(f"--flush-timeout {args.flush_timeout}: expected a number of seconds >= 0")
    return run_daemon(_configured(args.config), flush_timeout_s=args.flush_timeout)


def _demo(args: argparse.Namespace) -> int:
    from isic_station.daemon.logging_setup import setup_logging
    from isic_station.tools.demo import run_demo

    setup_logging("WARNING")
    for name in ("duration", "interval", "dwell"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name} {value}: expected a positive number of seconds")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count {args.count}: expected at least 1")
    return run_demo(args)


def _doctor(args: argparse.Namespace) -> int:
    from isic_station.tools.doctor import doctor

    return doctor(_configured(args.config), npu=args.npu)


def _calibrate(args: argparse.Namespace) -> int:
    from isic_station.daemon.station import calibrate_once

    info = calibrate_once(_configured(args.config), args.reference)
    print(info)
    return 0

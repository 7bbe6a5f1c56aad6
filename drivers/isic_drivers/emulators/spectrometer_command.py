"""`isic-station emulate spectrometer`: an OBP instrument on a pseudo-terminal, until SIGTERM/SIGINT.

The first line on stdout is the port to open (the pty's path, or `--link` when given); logs go to
stderr. Heavy imports (numpy, the virtual lab) happen in the handler, so `--help` is instant.
"""

import argparse
import logging
import signal
import sys
from typing import Any

from isic_common.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `spectrometer` to the `emulate` group."""
    parser = subparsers.add_parser(
        "spectrometer",
        help="an OBP spectrometer on a pseudo-terminal measuring the virtual lab's sample stage",
        description="Open a pseudo-terminal, print its path as the first line on stdout, and answer the "
                    "Ocean Binary Protocol there as an InGaAs instrument (900-1700 nm, 256 pixels, 16-bit by "
                    "default) measuring what lies on the virtual lab's sample stage, until SIGTERM or Ctrl-C. "
                    "It takes the time a real one takes: integration time x scans to average, then the reply "
                    "at the baud rate's pace (unless --no-pace).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--stage", metavar="FILE",
                       help="stage file shared with the virtual microscope (sample, white/dark tile or line)")
    where.add_argument("--seed", type=int, default=None,
                       help="production line seed: a new sample every --dwell seconds (default: seed 0)")
    parser.add_argument("--dwell", type=float, default=10.0, metavar="S",
                        help="seconds each production-line sample stays under the probe (default 10)")
    parser.add_argument("--preset", default="default", metavar="NAME",
                        help="the lab's nuisance preset for production-line samples (default, humid, ...)")
    parser.add_argument("--pixels", type=int, default=None, help="pixel count (default 256)")
    parser.add_argument("--range", type=float, nargs=2, default=None, metavar=("START_NM", "END_NM"),
                        dest="wavelength_range", help="linear wavelength axis (default 900 1700, slightly curved)")
    parser.add_argument("--serial", default=None, metavar="SN", help="serial number the instrument reports")
    parser.add_argument("--baud", type=int, default=115200, metavar="B",
                        help="baud rate the instrument reports and paces its replies at (default 115200)")
    parser.add_argument("--no-pace", dest="pace", action="store_false",
                        help="answer at once instead of at the line's rate (8N1, 10 bits per byte) after "
                             "integrating (integration time x scans to average): for tests that need raw speed")
    parser.add_argument("--no-averaging", dest="averaging", action="store_false",
                        help="firmware without on-instrument averaging: NACK scans-to-average (error 2), so "
                             "the station co-adds single scans itself")
    parser.add_argument("--no-temperature", dest="temperature_sensor", action="store_false",
                        help="firmware without a temperature sensor: NACK both temperature messages (error 2), "
                             "so results carry no temperature and the trained-range check cannot run")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=RATE",
                        help="fault probability per request; NAME is garbage, checksum, drop, delay, nack or "
                             "reopen; repeat for several (e.g. --fault garbage=0.05 --fault drop=0.02)")
    parser.add_argument("--delay-s", type=float, default=1.5, metavar="S",
                        help="how late a 'delay' fault's reply comes (default 1.5 s)")
    parser.add_argument("--reopen-s", type=float, default=0.5, metavar="S",
                        help="how long the line stays closed on a 'reopen' fault (default 0.5 s)")
    parser.add_argument("--lamp-drift", type=float, default=0.0, metavar="PER_HOUR",
                        help="lamp output lost per hour, as a fraction (e.g. 0.02); shows as white drift")
    parser.add_argument("--link", default=None, metavar="PATH",
                        help="stable symlink re-pointed to each new pty (printed instead of the pty path)")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of detector noise and fault draws")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                        help="pin an instrument nuisance parameter for everything measured, reference tiles "
                             "included (repeatable), e.g. --set wavelength_shift_nm=3 (the axis moved 3 nm)")
    parser.set_defaults(handler=run)


def run(args: Any) -> int:
    """Serve until SIGTERM/SIGINT; exit 0."""
    # the docstring's promise: without a handler Python drops INFO records (the start line, NACKs, faults)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from isic_drivers.emulators.pseudo_terminal import PseudoTerminal
    from isic_drivers.emulators.spectrometer import (
        BAUD_RATES,
        EmulatedSpectrometer,
        FaultRates,
        Server,
        instrument_for,
    )
    from isic_drivers.lab.sample import parse_overrides
    from isic_drivers.lab.stage import SampleStage

    if args.baud not in BAUD_RATES:
        raise ConfigError(f"--baud {args.baud}: expected one of {', '.join(map(str, BAUD_RATES))}")
    if args.dwell <= 0 or args.delay_s < 0 or args.reopen_s < 0 or args.lamp_drift < 0:
        raise ConfigError("--dwell must be > 0; --delay-s, --reopen-s and --lamp-drift must be >= 0")
    faults = FaultRates.parse(args.fault)
    instrument = instrument_for(args.pixels, args.wavelength_range, args.serial)
    if args.stage:
        stage = SampleStage(args.stage)
    else:
        stage = SampleStage.production_line(0 if args.seed is None else args.seed, args.dwell, args.preset)
    stage.current()  # a bad stage file or preset fails now, with its message, not on the first request
    device = EmulatedSpectrometer(stage, instrument, faults, seed=args.noise_seed, baud=args.baud,
                                  lamp_drift_per_h=args.lamp_drift, delay_s=args.delay_s, averaging=args.averaging,
                                  overrides=parse_overrides(args.overrides),
                                  temperature_sensor=args.temperature_sensor)
    try:
        line = PseudoTerminal(args.link)
    except OSError as exc:
        where = f" linked as {args.link}" if args.link else ""
        raise ConfigError(f"cannot open a pseudo-terminal{where}: {exc}") from exc
    server = Server(device, line, reopen_s=args.reopen_s, pace=args.pace)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    print(line.path, flush=True)
    log.info("emulated spectrometer %s (%d px, %.0f-%.0f nm) on %s, %s, %s; state pinned for every scan: %s",
             instrument.serial, instrument.n_pixels, instrument.wavelengths_nm[0], instrument.wavelengths_nm[-1],
             line.path, f"paced at {args.baud} baud 8N1" if args.pace else "unpaced (no line clock)",
             "on-instrument averaging" if args.averaging else "no on-instrument averaging",
             " ".join(f"{k}={v:g}" for k, v in device.overrides.items()) or "none")
    try:
        server.serve()
    finally:
        line.remove()
    log.info("stopped after %d requests, %d line reopens", device.requests, server.reopens)
    sys.stdout.flush()
    return 0

"""`isic-station emulate DEVICE`: devices on this machine that stand in for the station's hardware.

Each module in EMULATE_MODULES registers one device sub-command with `register(subparsers)` (as
`isic_station.tools.bench` does for benchmarks), so another emulated device is one more tuple entry.
"""

import argparse
import importlib

EMULATE_MODULES = (
    "isic_drivers.emulators.spectrometer_command",
)


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `emulate` and its device sub-commands."""
    parser = subparsers.add_parser(
        "emulate", help="run an emulated device (for the demo, tests and benches; no hardware needed)")
    sub = parser.add_subparsers(dest="device", metavar="DEVICE")
    sub.required = True
    for name in EMULATE_MODULES:
        importlib.import_module(name).register(sub)

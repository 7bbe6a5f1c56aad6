"""`isic-station bench ...`: benchmark commands that print measured figures (text, or one JSON object).

Speed and memory targets are checked by these commands, not by timed tests: the machines that
run the tests are shared and noisy. Each module in BENCH_MODULES registers one `bench` sub-command.
"""

import argparse
import importlib

BENCH_MODULES = (
    "isic_station.tools.bench.model",
    "isic_station.tools.bench.serial_link",
    "isic_station.tools.bench.mqtt",
    "isic_station.tools.bench.camera",
    "isic_station.tools.bench.pipeline",
    "isic_station.tools.bench.accuracy",
)


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add `bench` and its sub-commands."""
    parser = subparsers.add_parser(
        "bench", help="measure speed and memory (prints figures; --json for one object)"
    )
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    sub.required = True
    for name in BENCH_MODULES:
        importlib.import_module(name).register(sub)

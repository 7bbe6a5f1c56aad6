"""`isic-station`: the station daemon and its field tools (run, demo, doctor, calibrate, emulate, bench)."""

import sys
from typing import List, Optional

from isic_common.command_line import build_parser, run
from isic_station import __version__

# One module per concern; each registers its own sub-commands.
COMMAND_MODULES = (
    "isic_station.tools.bench",
    "isic_station.tools.station_commands",
    "isic_drivers.emulators.cli",
    "isic_station.tools.schema_docs",
    "isic_station.tools.broker_acl",
)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `isic-station` console command."""
    parser = build_parser(
        "isic-station",
        "ISiC textile inspection station: measures fibre composition from a NIR spectrum and "
        "microscope frames and publishes results over MQTT.",
        __version__,
        COMMAND_MODULES,
    )
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())

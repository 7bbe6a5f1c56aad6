"""Which station settings a figure is measured with: the demo bench's (the default of every figure the
station's bench can reproduce), a station's own config, or what training used (the manifest's record).

Its own module, below `evaluate`, `calibration_data` and `calibrate_uncertainty`, which all need it: kept in
`evaluate` it tied the three into an import cycle.
"""

import tempfile
from pathlib import Path
from typing import Any, Optional

from isic_model.data import StationSettings
from isic_station.config import load_config
from isic_station.tools.demo import DemoBench


def training_settings(manifest: Any) -> StationSettings:
    """The station settings training used (the manifest's `training.station`)."""
    return StationSettings(**manifest.raw.get("training", {}).get("station", {}))


def station_settings(config_path: Optional[Path] = None) -> StationSettings:
    """The settings a station measures with: its config at `config_path`, else the demo bench's config."""
    if config_path is not None:
        return StationSettings.of_station(load_config(config_path))

    with tempfile.TemporaryDirectory(prefix="isic-eval-") as folder:
        bench = DemoBench(Path(folder))
        bench.pty_path = "/dev/null"      # only the config is used: no devices are started
        return StationSettings.of_station(load_config(bench.write_config()))

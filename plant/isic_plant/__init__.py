"""The plant-side historian of the ISiC stations: collector, audit trail, SPC, lab cross-checks, web and API.

It never runs on the board: the station (`isic_station`) publishes over MQTT, this package stores,
checks and reports. The payload schemas stay the station's own (`isic_station.schemas`).
"""

__version__ = "0.1.0"

"""The plant service's own JSON Schemas: its config file and the plant alarm it publishes
(the stations' payload schemas stay in `isic_station.schemas`)."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict

SCHEMA_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def load_plant_schema(name: str) -> Dict[str, Any]:
    """The schema `<name>.schema.json` of this folder."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))

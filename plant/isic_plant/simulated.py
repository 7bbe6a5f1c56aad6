"""Simulated stations for the ingest bench and the tests: result documents built by the station's own
code (`isic_station.messaging.results.build_result`, `spec_check`), so they are what a real station publishes."""

import random
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional

from isic_station.daemon.spec_check import LotSpec, check_composition
from isic_station.messaging.results import build_result

FIBRES = ("cotton", "linen", "nylon", "polyester", "viscose")
MODEL = {"name": "isic-net", "version": "sim", "sha256": "0" * 64}


class SimulatedStation:
    """A station measuring one lot: composition = declared + bias + noise (sd `noise`), per fibre."""

    def __init__(self, station_id: str, lot_id: Optional[str], declared: Dict[str, float], noise: float = 0.01,
                 bias: Optional[Dict[str, float]] = None, seed: int = 0, tolerance_pp: float = 5.0,
                 start: Optional[datetime] = None) -> None:
        self.station_id = station_id
        self.spec = LotSpec(lot_id, dict(declared), tolerance_pp) if lot_id else None
        self.lot_id = lot_id
        self.declared = dict(declared)
        self.noise = noise
        self.bias = dict(bias or {})
        self.rng = random.Random(seed)
        self.sequence = 0
        self.clock = start or datetime.now(timezone.utc)

    def result(self, sample_id: Optional[str] = None, shift: Optional[Dict[str, float]] = None,
               measured_at: Optional[datetime] = None) -> Dict[str, Any]:
        """The next result; `shift` adds to the true composition (a drifting process)."""
        self.sequence += 1
        self.clock = measured_at or (self.clock + timedelta(milliseconds=10))
        raw = {f: max(0.0, self.declared.get(f, 0.0) + self.bias.get(f, 0.0) + (shift or {}).get(f, 0.0)
                      + (self.rng.gauss(0.0, self.noise) if self.declared.get(f, 0.0) > 0 else 0.0))
               for f in FIBRES}
        total = sum(raw.values()) or 1.0
        composition = {f: v / total for f, v in raw.items()}
        present = sorted(f for f, v in composition.items() if v >= 0.05)
        return build_result(
            station=self.station_id, sequence=self.sequence, composition=composition, blend="/".join(present),
            confidence=0.95, uncertainty={f: (self.noise if composition[f] > 0 else 0.0) for f in FIBRES},
            flags=[], model=MODEL, backend="onnxruntime",
            timings_ms={"acquire": 400.0, "preprocess": 5.0, "infer": 8.0, "total": 420.0},
            sample_id=sample_id, lot_id=self.lot_id,
            spec=check_composition(self.spec, composition) if self.spec else None, measured_at=self.clock)

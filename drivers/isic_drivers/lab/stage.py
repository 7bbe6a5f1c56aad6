"""The sample stage: what lies under the spectrometer probe and the microscope right now.

The emulated spectrometer (its own process) and the virtual microscope must see the same fabric,
so the stage is either a small JSON file both read (a technician puts a sample, the white tile or
the dark tile there; a production line can be put there too), or an in-process production line.
A production line draws a new sample every `dwell_s` seconds from its seed: sample i is drawn
from the seed and i alone, so every process that knows the line agrees on what is under the
probe at a given time. Writes are atomic (temporary file + os.replace), so a reader never sees
half a file.
"""

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from isic_drivers.lab.fibres import LabConfigError
from isic_drivers.lab.sample import Sample, draw_sample

log = logging.getLogger(__name__)

REFERENCE_KINDS = ("white", "dark", "wavelength")


@dataclass(frozen=True)
class ReferenceTile:
    """A calibration target under the probe: the white tile, the dark (light-trap) tile, or the
    wavelength reference tile (`wavelength_standard`)."""

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_KINDS:
            raise LabConfigError(f"reference tile kind {self.kind!r}: expected one of {REFERENCE_KINDS}")


StageContent = Union[Sample, ReferenceTile]


@dataclass(frozen=True)
class ProductionLine:
    """Samples passing under the probe: sample i = draw_sample(rng(seed, i)) for `dwell_s` seconds each."""

    seed: int
    dwell_s: float
    preset: str = "default"
    overrides: Dict[str, float] = field(default_factory=dict)
    start_time: float = 0.0

    def index_at(self, now: float) -> int:
        """Which sample is under the probe at time `now` (seconds since the epoch)."""
        return int((now - self.start_time) // self.dwell_s)

    def sample(self, index: int) -> Sample:
        """Sample number `index` of the line (the same in every process)."""
        rng = np.random.default_rng([self.seed, index])
        return draw_sample(rng, self.preset, self.overrides, sample_id=f"L{self.seed}-{index:06d}")

    def to_dict(self) -> Dict[str, Any]:
        """The stage-file form of the line."""
        return {"kind": "line", "seed": self.seed, "dwell_s": self.dwell_s, "preset": self.preset,
                "overrides": dict(self.overrides), "start_time": self.start_time}


def _parse(data: Mapping[str, Any], where: str) -> Union[Sample, ReferenceTile, ProductionLine]:
    kind = data.get("kind")
    try:
        if kind == "sample":
            return Sample.from_dict(data["sample"])
        if kind in REFERENCE_KINDS:
            return ReferenceTile(str(kind))
        if kind == "line":
            line = ProductionLine(int(data["seed"]), float(data["dwell_s"]), str(data.get("preset", "default")),
                                  {str(k): float(v) for k, v in data.get("overrides", {}).items()},
                                  float(data.get("start_time", 0.0)))
            if line.dwell_s <= 0:
                raise LabConfigError(f"{where}: dwell_s must be > 0, got {line.dwell_s}")
            return line
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, LabConfigError):
            raise
        raise LabConfigError(f"{where}: malformed {kind!r} entry ({exc})") from None
    raise LabConfigError(f"{where}: 'kind' is {kind!r}; expected 'sample', 'white', 'dark' or 'line'")


class SampleStage:
    """What is under the probe, shared through a JSON file or driven by an in-process production line."""

    def __init__(self, path: Optional[Union[str, Path]] = None, line: Optional[ProductionLine] = None,
                 clock: Callable[[], float] = time.time) -> None:
        if (path is None) == (line is None):
            raise ValueError("a SampleStage needs exactly one of a file path or a production line")
        self.path = Path(path) if path is not None else None
        self._line = line
        self._clock = clock
        self._stamp: Optional[Tuple[int, int, int]] = None
        self._content: Optional[Union[Sample, ReferenceTile, ProductionLine]] = None

    @classmethod
    def production_line(cls, seed: int, dwell_s: float, preset: str = "default",
                        overrides: Optional[Mapping[str, float]] = None, start_time: float = 0.0,
                        clock: Callable[[], float] = time.time) -> "SampleStage":
        """An in-process line: a new sample every `dwell_s` seconds from `seed`."""
        return cls(line=ProductionLine(seed, dwell_s, preset, dict(overrides or {}), start_time), clock=clock)

    def _write(self, data: Mapping[str, Any]) -> None:
        if self.path is None:
            raise ValueError("this stage is an in-process production line; it has no file to put things on")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stage-", dir=str(self.path.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("stage %s now holds %s", self.path, data.get("kind"))

    def put_sample(self, sample: Sample) -> None:
        """Put a fabric sample under the probe."""
        self._write({"kind": "sample", "sample": sample.to_dict()})

    def put_reference(self, kind: str) -> None:
        """Put the white or the dark reference tile under the probe (what calibration needs)."""
        self._write({"kind": ReferenceTile(kind).kind})

    def put_line(self, seed: int, dwell_s: float, preset: str = "default",
                 overrides: Optional[Mapping[str, float]] = None, start_time: Optional[float] = None) -> None:
        """Run a production line through the stage file (start time: now unless given)."""
        line = ProductionLine(seed, dwell_s, preset, dict(overrides or {}),
                              self._clock() if start_time is None else start_time)
        self._write(line.to_dict())

    def _load(self) -> Union[Sample, ReferenceTile, ProductionLine]:
        if self._line is not None:
            return self._line
        assert self.path is not None
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return ReferenceTile("dark")  # nothing under the probe: it sees (almost) no light
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # os.replace gives a new inode per write
        if stamp != self._stamp or self._content is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise LabConfigError(f"stage file {self.path} cannot be read as JSON: {exc}") from None
            self._content = _parse(data, f"stage file {self.path}")
            self._stamp = stamp
        return self._content

    def current(self) -> StageContent:
        """The sample or reference tile under the probe now (re-reads the file when it changed)."""
        content = self._load()
        if isinstance(content, ProductionLine):
            return content.sample(content.index_at(self._clock()))
        return content

"""The model manifest: what the runtime feeds ISiC-Net and how it reads the outputs.

Training writes it (`isic-model export`), the runtime reads it through `load_manifest`; nothing
about inputs, shapes, the wavelength grid, preprocessing or labels is written twice by hand.
Its schema is `schemas/manifest.schema.json`.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from isic_common.errors import ModelError
from isic_station.schemas import validation_errors


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the manifest declares it."""

    name: str
    shape: Tuple[int, ...]
    dtype: str
    meaning: str = ""


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph (bimodal or signal-only) and its files beside the manifest."""

    key: str
    onnx_path: Path
    om_path: Optional[Path]
    sha256: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    def output(self, name: str) -> TensorSpec:
        """The output called `name` (ModelError when the graph has none)."""
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise ModelError(f"graph '{self.key}' has no output '{name}' (has {[o.name for o in self.outputs]})")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest; `raw` keeps the document for the fields only some readers need.

    `sha256` is the manifest file's own checksum: the graphs' checksums do not cover the labels or
    the preprocessing, so the model's identity is the pair (see `identity`).
    """

    path: Path
    raw: Dict[str, Any]
    fibres: Tuple[str, ...]
    blend_classes: Tuple[str, ...]
    graphs: Dict[str, GraphSpec]
    sha256: str = ""

    @property
    def name(self) -> str:
        return str(self.raw["model"]["name"])

    @property
    def version(self) -> str:
        return str(self.raw["model"]["version"])

    def identity(self, graph: str = "bimodal") -> Dict[str, str]:
        """The result's `model`: name, version, the graph's and the manifest's sha256."""
        return {"name": self.name, "version": self.version, "sha256": self.graphs[graph].sha256,
                "manifest_sha256": self.sha256}

    @property
    def spectrum(self) -> Dict[str, Any]:
        return self.raw["spectrum"]

    @property
    def image(self) -> Dict[str, Any]:
        return self.raw["image"]

    @property
    def wavelengths_nm(self) -> List[float]:
        return list(self.raw["spectrum"]["wavelengths_nm"])

    @property
    def temperature_input(self) -> Optional[Dict[str, float]]:
        """How the graphs' `temperature` input scales the sensor's reading (`preprocess.room`); None: no such input."""
        doc = self.raw.get("temperature_input")
        return None if doc is None else dict(doc)

    @property
    def calibration_data(self) -> Dict[str, Any]:
        """What the uncertainty calibration was fitted on (`uncertainty.data`: station settings, conditions,
        seeds); {} without a calibration."""
        return dict(self.raw.get("uncertainty", {}).get("data", {}))

    def condition_problem(self, temperature_c: Optional[float]) -> Optional[str]:
        """Why a measurement in a room at `temperature_c` lies outside what the model was trained in (the
        manifest's `conditions`) or its uncertainty calibrated in (`uncertainty.data.conditions`), or None:
        within both, no reading, or no recorded range. The spectrum does not show a cold room (a 10 degC room
        cost the version-4 model 19 points with nothing flagged): the sensor does."""
        spans = {"trained": self.raw.get("conditions", {}).get("temperature_c"),
                 "calibrated": self.calibration_data.get("conditions", {}).get("temperature_c")}
        outside = [f"{span[0]:g}-{span[1]:g} degC the model was {kind} in" for kind, span in spans.items()
                   if span is not None and temperature_c is not None and not span[0] <= temperature_c <= span[1]]
        if not outside:
            return None
        return f"room temperature {temperature_c:.1f} degC is outside the " + " and the ".join(outside)

    def unread_room_problem(self, temperature_c: Optional[float]) -> Optional[str]:
        """Why a measurement with no room reading cannot be vouched for, or None: the graphs take the room as an
        input and were given none. They still answer (trained with readings dropped), but away from the
        reference room they lose accuracy, the intervals calibrated with readings do not hold, and no range
        check can flag a cold room."""
        if temperature_c is not None or self.temperature_input is None:
            return None
        return (f"no room temperature reading, and model {self.version} takes the room as an input: away from "
                f"{self.temperature_input['reference_c']:g} degC its answer and interval do not hold, and no "
                "range check can flag the room")


def _tensor(doc: Dict[str, Any]) -> TensorSpec:
    return TensorSpec(doc["name"], tuple(int(d) for d in doc["shape"]), doc["dtype"], doc.get("meaning", ""))


def _graph(key: str, doc: Dict[str, Any], folder: Path) -> GraphSpec:
    om = doc.get("om")
    return GraphSpec(
        key=key,
        onnx_path=folder / doc["onnx"],
        om_path=(folder / om) if om else None,
        sha256=doc["sha256"],
        inputs=tuple(_tensor(t) for t in doc["inputs"]),
        outputs=tuple(_tensor(t) for t in doc["outputs"]),
    )


def _consistency_problems(raw: Dict[str, Any]) -> List[str]:
    """Cross-field checks the JSON Schema cannot express."""
    problems = []
    spectrum = raw["spectrum"]
    n_points = len(spectrum["wavelengths_nm"])
    for key in ("mean", "std"):
        if len(spectrum[key]) != n_points:
            problems.append(f"spectrum.{key} has {len(spectrum[key])} values, wavelengths_nm has {n_points}")
    takers = sorted(key for key, graph in raw["graphs"].items()
                    if any(t["name"] == "temperature" for t in graph["inputs"]))
    if bool(takers) != ("temperature_input" in raw):
        problems.append(f"graphs {takers} take 'temperature' but there is no temperature_input" if takers else
                        "temperature_input is given but no graph takes 'temperature'")
    fibres = set(raw["fibres"])
    for label in raw["blend_classes"]:
        unknown = [f for f in label.split("/") if f not in fibres]
        if unknown:
            problems.append(f"blend class '{label}' names fibres not in 'fibres': {unknown}")
    return problems


def load_manifest(path: Union[str, Path]) -> Manifest:
    """Read and validate a manifest; ModelError names the file and every problem found."""
    path = Path(path)
    try:
        data = path.read_bytes()
        raw = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model manifest {path} cannot be read: {exc}") from None
    problems = validation_errors(raw, "manifest")
    if not problems:
        problems = _consistency_problems(raw)
    if problems:
        raise ModelError(f"model manifest {path} is invalid: " + "; ".join(problems))
    graphs = {key: _graph(key, doc, path.parent) for key, doc in raw["graphs"].items()}
    return Manifest(path, raw, tuple(raw["fibres"]), tuple(raw["blend_classes"]), graphs,
                    hashlib.sha256(data).hexdigest())


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (models can be larger than we want in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_graph_file(graph: GraphSpec) -> None:
    """ModelError unless the graph's .onnx exists and matches the manifest's sha256."""
    if not graph.onnx_path.is_file():
        raise ModelError(f"model file missing: {graph.onnx_path} (graph '{graph.key}')")
    actual = file_sha256(graph.onnx_path)
    if actual != graph.sha256:
        raise ModelError(
            f"model file {graph.onnx_path} is corrupt or replaced: sha256 {actual[:12]}… "
            f"but the manifest expects {graph.sha256[:12]}…"
        )

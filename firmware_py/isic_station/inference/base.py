"""What every inference backend promises, and what the runtime hands on after fusing its outputs.

A backend runs one of the manifest's graphs (`bimodal`, `signal_only`, ...) on named float32 arrays and
returns named float32 arrays; it knows nothing about spectra, frames or fibres. Keeping that seam
narrow lets the same `Predictor` drive the NPU (pyACL) and the CPU (ONNX Runtime), and lets the
tests check one backend against the other array for array.
"""

import abc
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from isic_common.errors import ConfigError, ModelError
from isic_station.manifest import GraphSpec, Manifest

GRAPH_BIMODAL = "bimodal"
GRAPH_SIGNAL_ONLY = "signal_only"
GRAPH_COUNTER = "counter"   # optional: the per-tile fibre counter (models with a `fibre_counts` input)
# Optional pair: the bimodal graph cut after its image encoder, so tiles are encoded as the frames arrive.
GRAPH_TILE_ENCODER = "tile_encoder"
GRAPH_FUSION = "fusion"


def whole_number_option(options: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    """The backend option `key` as an int >= `minimum` (ConfigError naming the key and the value)."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"inference option '{key}' must be a whole number >= {minimum}, got {value!r}")
    return value


class Backend(abc.ABC):
    """One inference runtime holding every graph of a manifest, ready after `load()`.

    `run()` may be called from any thread; implementations serialise what their runtime needs
    serialised. `close()` releases everything and may be called more than once.
    """

    #: The registry key (`acl`, `onnxruntime`) and the name results and benchmarks report.
    kind = ""
    #: Set by the registry when `auto` ran this backend instead of the NPU: why (for STATUS= and logs).
    fallback_reason: Optional[str] = None

    def __init__(self, manifest: Manifest, options: Optional[Mapping[str, Any]] = None) -> None:
        self.manifest = manifest
        self.options: Dict[str, Any] = dict(options or {})

    @property
    def name(self) -> str:
        """Which runtime this is, as results and `bench model` report it."""
        return self.kind

    @abc.abstractmethod
    def load(self) -> None:
        """Start the runtime and load every graph; StationError subclasses name what is wrong."""

    @abc.abstractmethod
    def run(self, graph_key: str, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run graph `graph_key` on `inputs` (name -> array); returns every output as float32."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the runtime's resources; safe to call again."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def graph(self, graph_key: str) -> GraphSpec:
        """The manifest's graph `graph_key` (ModelError naming the graphs it has)."""
        try:
            return self.manifest.graphs[graph_key]
        except KeyError:
            raise ModelError(
                f"model manifest {self.manifest.path} has no graph '{graph_key}' "
                f"(has {sorted(self.manifest.graphs)})"
            ) from None

    def ordered_inputs(self, graph_key: str, inputs: Mapping[str, np.ndarray]) -> List[np.ndarray]:
        """`inputs` in the graph's input order, as C-contiguous float32 of exactly the manifest's shapes.

        A wrong name or shape is a caller's bug, but it is reported with the graph, the input and
        both shapes, because on the NPU it would otherwise surface as a bare size error.
        """
        graph = self.graph(graph_key)
        expected = [spec.name for spec in graph.inputs]
        if sorted(inputs) != sorted(expected):
            raise ValueError(f"graph '{graph_key}' takes inputs {expected}, got {sorted(inputs)}")
        arrays = []
        for spec in graph.inputs:
            array = np.ascontiguousarray(inputs[spec.name], dtype=np.float32)
            if array.shape != spec.shape:
                raise ValueError(
                    f"graph '{graph_key}' input '{spec.name}' must have shape {list(spec.shape)}, "
                    f"got {list(array.shape)}"
                )
            arrays.append(array)
        return arrays


@dataclass(frozen=True)
class Prediction:
    """One measurement's fused result: what the station publishes about the fabric.

    `composition` and `uncertainty` are keyed by fibre (fractions summing to 1; the calibrated
    standard uncertainty when the manifest has an `uncertainty` calibration, else the spread over
    the image tiles, 0 when signal-only); `blend_probabilities` by blend class; `confidence` is the
    probability of `blend` (temperature-scaled when calibrated). `timings_ms` has `preprocess_ms`
    and `infer_ms`. With a calibration, `interval_95` {fibre: [low, high]}, `unknown_fibre` and its
    score, and the quality flags the calibration never saw (`uncalibrated_flags`) are set too.
    """

    composition: Dict[str, float]
    uncertainty: Dict[str, float]
    blend: str
    blend_probabilities: Dict[str, float]
    confidence: float
    signal_only: bool
    backend: str
    timings_ms: Dict[str, float] = field(default_factory=dict)
    interval_95: Optional[Dict[str, List[float]]] = None
    decision_interval_95: Optional[Dict[str, List[float]]] = None  # what the spec check judges (uncertainty.py)
    unknown_fibre: bool = False
    unknown_fibre_score: Optional[float] = None
    uncalibrated_flags: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready dict (for payloads and `--json` output)."""
        return {
            "composition": dict(self.composition),
            "uncertainty": dict(self.uncertainty),
            "blend": self.blend,
            "blend_probabilities": dict(self.blend_probabilities),
            "confidence": self.confidence,
            "signal_only": self.signal_only,
            "backend": self.backend,
            "timings_ms": dict(self.timings_ms),
            "interval_95": None if self.interval_95 is None else {k: list(v) for k, v in self.interval_95.items()},
            "unknown_fibre": self.unknown_fibre,
            "unknown_fibre_score": self.unknown_fibre_score,
        }

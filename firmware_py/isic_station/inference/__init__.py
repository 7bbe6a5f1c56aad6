"""Inference runtime: backends that run the manifest's graphs (pyACL on the NPU, ONNX Runtime on a CPU).

`create_backend(kind, manifest, options)` (registry) gives a loaded `Backend`;
`isic_station.inference.predictor.Predictor` turns one measurement into a `Prediction`.
Importing this package imports no runtime: pyACL and ONNX Runtime are imported when a backend loads.
"""

from isic_station.inference.base import GRAPH_BIMODAL, GRAPH_SIGNAL_ONLY, Backend, Prediction
from isic_station.inference.registry import BACKENDS, KINDS, create_backend, resolve_kind

__all__ = [
    "BACKENDS",
    "GRAPH_BIMODAL",
    "GRAPH_SIGNAL_ONLY",
    "KINDS",
    "Backend",
    "Prediction",
    "create_backend",
    "resolve_kind",
]

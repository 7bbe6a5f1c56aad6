"""The CPU backend: the manifest's .onnx graphs through ONNX Runtime.

Used on a bench, in CI, and on the board when the NPU is absent. ONNX Runtime is imported in
`load()`, not at import time, so a board without the `runtime` extra can still import the
station and get a clear BackendUnavailable when this backend is asked for.
"""

import logging
from typing import Any, Dict, Mapping, Optional

import numpy as np

from isic_common.errors import BackendUnavailable, ModelError
from isic_station.inference.base import Backend, whole_number_option
from isic_station.manifest import GraphSpec, Manifest, verify_graph_file

log = logging.getLogger(__name__)

DEFAULT_THREADS = 1


class OnnxRuntimeBackend(Backend):
    """Every graph of the manifest in its own ONNX Runtime session on the CPU.

    Options: `threads` (intra-op threads per session, default 1: on the board the other cores
    serve acquisition and MQTT). Sessions run sequentially inside; `InferenceSession.run` is
    thread-safe, so no lock is needed here.
    """

    kind = "onnxruntime"

    def __init__(self, manifest: Manifest, options: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(manifest, options)
        self.threads = whole_number_option(self.options, "threads", DEFAULT_THREADS, minimum=1)
        self._sessions: Dict[str, Any] = {}

    def load(self) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise BackendUnavailable(
                f"ONNX Runtime is not installed ({exc}): install the runtime extra, "
                "pip install 'isic-station[runtime]', or choose inference backend 'acl'"
            ) from None
        for key, graph in self.manifest.graphs.items():
            self._sessions[key] = self._open_session(onnxruntime, graph)
        log.info("ONNX Runtime %s: loaded graphs %s from %s with %d thread(s)",
                 onnxruntime.__version__, sorted(self._sessions), self.manifest.path.parent, self.threads)

    def _open_session(self, onnxruntime: Any, graph: GraphSpec) -> Any:
        """A session for `graph` after its checksum and its input/output names are checked."""
        verify_graph_file(graph)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = onnxruntime.InferenceSession(
                str(graph.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own pybind exception types for a bad graph
            raise ModelError(f"ONNX Runtime cannot load {graph.onnx_path} (graph '{graph.key}'): {exc}") from None
        declared = sorted(t.name for t in graph.inputs), sorted(t.name for t in graph.outputs)
        actual = sorted(i.name for i in session.get_inputs()), sorted(o.name for o in session.get_outputs())
        if declared != actual:
            raise ModelError(
                f"{graph.onnx_path} has inputs {actual[0]} and outputs {actual[1]}, but the manifest "
                f"declares inputs {declared[0]} and outputs {declared[1]} for graph '{graph.key}'"
            )
        declared_shapes = {t.name: t.shape for t in graph.inputs}
        for tensor in session.get_inputs():
            # Static dimensions must agree; a symbolic one (a str) accepts the manifest's value.
            shape = tuple(tensor.shape)
            wanted = declared_shapes[tensor.name]
            if len(shape) != len(wanted) or any(isinstance(d, int) and d != w for d, w in zip(shape, wanted)):
                raise ModelError(
                    f"{graph.onnx_path} input '{tensor.name}' has shape {list(shape)}, but the manifest "
                    f"declares {list(wanted)} for graph '{graph.key}'"
                )
        return session

    def run(self, graph_key: str, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        graph = self.graph(graph_key)
        session = self._sessions.get(graph_key)
        if session is None:
            raise RuntimeError(f"ONNX Runtime backend: graph '{graph_key}' is not loaded (call load() first)")
        arrays = self.ordered_inputs(graph_key, inputs)
        feeds = {spec.name: array for spec, array in zip(graph.inputs, arrays)}
        names = [spec.name for spec in graph.outputs]
        results = session.run(names, feeds)
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(names, results)}

    def close(self) -> None:
        self._sessions.clear()

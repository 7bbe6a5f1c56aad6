"""What makes an exported graph ATC-ready: `onnx.checker`, opset 11, every op on the allow-list, static shapes.

`export` refuses graphs that fail these, `split_graph` the graphs it cuts, and the tests hold the shipped
graphs to them; ONNX Runtime must also reproduce the reference to `ORT_TOLERANCE`.
"""

from pathlib import Path
from typing import List, Optional

import onnx

OPSET = 11
ALLOWLIST_PATH = Path(__file__).resolve().parent / "atc_allowlist.txt"
# ONNX Runtime must agree with the reference (torch, or the graph cut apart) to this absolute tolerance.
ORT_TOLERANCE = 1e-4


def load_allowlist(path: Path = ALLOWLIST_PATH) -> frozenset:
    """The ONNX op types ATC accepts, one per line in the repo's allow-list ('#' comments)."""
    names = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return frozenset(name for name in names if name)


def graph_op_types(path: Path) -> frozenset:
    """Every op type used by the graph's nodes (top level; our graphs have no subgraphs)."""
    return frozenset(node.op_type for node in onnx.load(str(path)).graph.node)


def graph_problems(path: Path, allowlist: Optional[frozenset] = None) -> List[str]:
    """Why ATC would reject this graph: checker errors, opset, ops off the allow-list, dynamic dims."""
    allowlist = load_allowlist() if allowlist is None else allowlist
    model = onnx.load(str(path))
    problems = []
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        problems.append(f"onnx.checker: {exc}")
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    if opsets.get("ai.onnx") != OPSET:
        problems.append(f"opset {opsets} is not ai.onnx {OPSET}")
    off_list = sorted({node.op_type for node in model.graph.node} - allowlist)
    if off_list:
        problems.append(f"ops not on the ATC allow-list {ALLOWLIST_PATH.name}: {off_list}")
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if any(not dim.HasField("dim_value") for dim in dims):
            problems.append(f"tensor '{value.name}' has a dynamic shape")
    return problems

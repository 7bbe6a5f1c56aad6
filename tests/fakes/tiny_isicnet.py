"""A tiny deterministic stand-in for the shipped ISiC-Net: two ONNX graphs and a schema-valid manifest.

With `counter=True` (the v5 layout) a third graph, the per-tile fibre counter (image [COUNTER_TILES,
C, P, P] -> fibre_length [COUNTER_TILES, F] = ReLU(pixels @ w_count)), and the bimodal graph's
third input `fibre_counts` [B, F] (added to the composition logits through w_counts_comp). With
`temperature=True` both graphs take `temperature` [B, 2] as a model trained with the room does, added to
the composition logits through w_temp_comp: +-20 per scaled unit, so a warm room reads cotton and a cold
one polyester whatever the spectrum (a test can see that the sensor's reading reached the graph).

Built with `onnx.helper` (no torch), so the runtime's tests do not depend on a trained model. The
graphs keep the real contract (input/output names and shapes, composition rows summing to 1,
per-tile rows that differ with the image) with fixed random weights; the numbers mean nothing.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

FIBRES = ("cotton", "polyester", "wool")
BLEND_CLASSES = ("cotton", "cotton/polyester", "polyester/wool")
N_POINTS = 32
TILE_PX = 16
TILES = 4
CHANNELS = 1
OPSET = 13
COUNTER_TILES = 3   # the counter graph's static tile batch (not a divisor of a frame's tiles: padding is exercised)
# Placeholder bytes for the .om files: FakeAcl loads the .onnx beside them instead.
OM_PLACEHOLDER = b"FAKE .om placeholder: tests.fakes.fake_acl runs the .onnx beside this file\n"


def model_weights(seed: int) -> Dict[str, np.ndarray]:
    """The fixed random weights of the tiny graphs (tests recompute the graphs in numpy)."""
    rng = np.random.default_rng(seed)
    n_fibres, n_classes, n_pixels = len(FIBRES), len(BLEND_CLASSES), CHANNELS * TILE_PX * TILE_PX
    return {
        "w_spec_comp": rng.normal(0, 0.5, (N_POINTS, n_fibres)).astype(np.float32),
        "w_img_comp": rng.normal(0, 0.1, (n_pixels, n_fibres)).astype(np.float32),
        "b_comp": rng.normal(0, 0.1, (n_fibres,)).astype(np.float32),
        "w_spec_blend": rng.normal(0, 0.5, (N_POINTS, n_classes)).astype(np.float32),
        "w_img_blend": rng.normal(0, 0.1, (n_pixels, n_classes)).astype(np.float32),
        "w_count": rng.normal(0, 0.1, (n_pixels, n_fibres)).astype(np.float32),
        "w_counts_comp": rng.normal(0, 0.5, (n_fibres, n_fibres)).astype(np.float32),
        "w_temp_comp": np.array([[20.0, -20.0] + [0.0] * (n_fibres - 2), [0.0] * n_fibres], np.float32),
    }


def build_counter_graph(seed: int = 7) -> Any:
    """The ONNX ModelProto of the tiny fibre counter."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = model_weights(seed)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["pixels"], axis=1),
         helper.make_node("MatMul", ["pixels", "w_count"], ["raw_length"]),
         helper.make_node("Relu", ["raw_length"], ["fibre_length"])],
        "tiny_isicnet_counter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [COUNTER_TILES, CHANNELS, TILE_PX, TILE_PX])],
        [helper.make_tensor_value_info("fibre_length", TensorProto.FLOAT, [COUNTER_TILES, len(FIBRES)])],
        initializer=[numpy_helper.from_array(weights["w_count"], "w_count")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tiny_isicnet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_graph(bimodal: bool, seed: int = 7, counts: bool = False, temperature: bool = False) -> Any:
    """The ONNX ModelProto of the bimodal graph (spectrum + image [+ fibre_counts] [+ temperature]) or the
    signal-only one (spectrum [+ temperature])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = model_weights(seed)
    batch = TILES if bimodal else 1
    inputs = [helper.make_tensor_value_info("spectrum", TensorProto.FLOAT, [batch, N_POINTS])]
    nodes = [
        helper.make_node("MatMul", ["spectrum", "w_spec_comp"], ["spec_comp"]),
        helper.make_node("MatMul", ["spectrum", "w_spec_blend"], ["spec_blend"]),
    ]
    comp_sum = "spec_comp"
    used = ["w_spec_comp", "w_spec_blend", "b_comp"]
    if bimodal:
        inputs.append(helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, CHANNELS, TILE_PX, TILE_PX]))
        nodes += [
            helper.make_node("Flatten", ["image"], ["pixels"], axis=1),
            helper.make_node("MatMul", ["pixels", "w_img_comp"], ["img_comp"]),
            helper.make_node("MatMul", ["pixels", "w_img_blend"], ["img_blend"]),
            helper.make_node("Add", ["spec_comp", "img_comp"], ["both_comp"]),
            helper.make_node("Add", ["spec_blend", "img_blend"], ["blend_logits"]),
        ]
        comp_sum = "both_comp"
        used += ["w_img_comp", "w_img_blend"]
        if counts:
            inputs.append(helper.make_tensor_value_info("fibre_counts", TensorProto.FLOAT, [batch, len(FIBRES)]))
            nodes += [helper.make_node("MatMul", ["fibre_counts", "w_counts_comp"], ["count_comp"]),
                      helper.make_node("Add", ["both_comp", "count_comp"], ["counted_comp"])]
            comp_sum = "counted_comp"
            used.append("w_counts_comp")
    else:
        nodes.append(helper.make_node("Identity", ["spec_blend"], ["blend_logits"]))
    if temperature:
        inputs.append(helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [batch, 2]))
        nodes += [helper.make_node("MatMul", ["temperature", "w_temp_comp"], ["temp_comp"]),
                  helper.make_node("Add", [comp_sum, "temp_comp"], ["tempered_comp"])]
        comp_sum = "tempered_comp"
        used.append("w_temp_comp")
    nodes += [
        helper.make_node("Add", [comp_sum, "b_comp"], ["comp_logits"]),
        helper.make_node("Softmax", ["comp_logits"], ["composition"], axis=-1),
    ]
    outputs = [
        helper.make_tensor_value_info("composition", TensorProto.FLOAT, [batch, len(FIBRES)]),
        helper.make_tensor_value_info("blend_logits", TensorProto.FLOAT, [batch, len(BLEND_CLASSES)]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_isicnet_bimodal" if bimodal else "tiny_isicnet_signal", inputs, outputs,
        initializer=[numpy_helper.from_array(weights[name], name) for name in used],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tiny_isicnet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _tensor(name: str, shape: Tuple[int, ...]) -> Dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": "float32"}


def manifest_document(shas: Dict[str, str], om: bool, seed: int = 11, temperature: bool = False) -> Dict[str, Any]:
    """A manifest for the tiny graphs (valid against schemas/manifest.schema.json); with a counter when
    `shas` has one, with the `temperature` input when `temperature`."""
    rng = np.random.default_rng(seed)
    outputs = [_tensor("composition", (TILES, len(FIBRES))), _tensor("blend_logits", (TILES, len(BLEND_CLASSES)))]
    signal_outputs = [_tensor("composition", (1, len(FIBRES))), _tensor("blend_logits", (1, len(BLEND_CLASSES)))]
    bimodal = {
        "onnx": "isicnet.onnx",
        "sha256": shas["bimodal"],
        "inputs": [_tensor("spectrum", (TILES, N_POINTS)), _tensor("image", (TILES, CHANNELS, TILE_PX, TILE_PX))],
        "outputs": outputs,
    }
    signal_only = {
        "onnx": "isicnet_signal.onnx",
        "sha256": shas["signal_only"],
        "inputs": [_tensor("spectrum", (1, N_POINTS))],
        "outputs": signal_outputs,
    }
    graphs = {"bimodal": bimodal, "signal_only": signal_only}
    if "counter" in shas:
        bimodal["inputs"].append(_tensor("fibre_counts", (TILES, len(FIBRES))))
        graphs["counter"] = {
            "onnx": "isicnet_counter.onnx",
            "sha256": shas["counter"],
            "inputs": [_tensor("image", (COUNTER_TILES, CHANNELS, TILE_PX, TILE_PX))],
            "outputs": [_tensor("fibre_length", (COUNTER_TILES, len(FIBRES)))],
        }
    if temperature:
        bimodal["inputs"].append(_tensor("temperature", (TILES, 2)))
        signal_only["inputs"].append(_tensor("temperature", (1, 2)))
    if om:
        for graph in graphs.values():
            graph["om"] = graph["onnx"].replace(".onnx", ".om")
    doc = {
        "manifest_version": 1,
        "model": {"name": "tiny-isicnet", "version": "0.0.0-test"},
        "fibres": list(FIBRES),
        "blend_classes": list(BLEND_CLASSES),
        "spectrum": {
            "wavelengths_nm": np.linspace(950.0, 1650.0, N_POINTS).round(3).tolist(),
            "reflectance_clip": [1e-4, 1.5],
            "scatter": "snv",
            "savgol": {"window": 7, "polyorder": 2, "deriv": 1},
            "mean": rng.normal(0.0, 0.01, N_POINTS).round(6).tolist(),
            "std": rng.uniform(0.01, 0.05, N_POINTS).round(6).tolist(),
        },
        "image": {"tile_px": TILE_PX, "um_per_px": 1.0, "channels": CHANNELS,
                  "tiles_per_measurement": TILES, "mean": 0.5, "std": 0.25},
        "graphs": graphs,
    }
    if temperature:
        doc["temperature_input"] = {"reference_c": 22.0, "scale_k": 20.0}
    return doc


def write_tiny_model(folder: Path, om: bool = True, seed: Optional[int] = None, counter: bool = False,
                     temperature: bool = False) -> Path:
    """Write the graphs, placeholder .om files (when `om`) and manifest.json into `folder`.

    Returns the manifest's path. `seed` changes the weights (same seed, same bytes); `counter` adds
    the fibre counter graph and the bimodal graph's `fibre_counts` input; `temperature` both graphs'
    `temperature` input.
    """
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    shas = {}
    weights_seed = 7 if seed is None else seed
    bimodal = build_graph(True, seed=weights_seed, counts=counter, temperature=temperature)
    graphs = [("bimodal", "isicnet.onnx", bimodal),
              ("signal_only", "isicnet_signal.onnx", build_graph(False, seed=weights_seed, temperature=temperature))]
    if counter:
        graphs.append(("counter", "isicnet_counter.onnx", build_counter_graph(seed=weights_seed)))
    for key, file_name, model in graphs:
        path = folder / file_name
        onnx.save(model, str(path))
        shas[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        if om:
            path.with_suffix(".om").write_bytes(OM_PLACEHOLDER)
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest_document(shas, om, temperature=temperature), indent=1),
                             encoding="utf-8")
    return manifest_path


def tiny_station_config(manifest: Path, station_id: str, state_dir: str, port: str, spectrometer: str = "",
                        mqtt: str = "") -> str:
    """A station config (TOML text) that runs this tiny model on ONNX Runtime, signal-only (no camera).
    `spectrometer` and `mqtt` are more lines of those tables; append other tables to the text."""
    return f"""[station]
id = "{station_id}"
state_dir = "{state_dir}"
[spectrometer]
port = "{port}"
{spectrometer}
[camera]
source = ""
[model]
manifest = "{manifest}"
backend = "onnxruntime"
threads = 1
[mqtt]
{mqtt}
"""


if __name__ == "__main__":
    import sys

    print(write_tiny_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-isicnet")))

"""Cut the bimodal graph after its image encoder into `tile_encoder` and `fusion`.

The image encoder (the ViT over one tile) reads each tile alone; everything after it (RG, ISiCA, the mean
over a run's tiles, the heads) needs the spectrum and all of a run's tiles. Cut there, the station encodes
a frame's tiles while later frames are still arriving, and only the fusion is left for after the
last frame (issue 14's budget: p50 <= 25 ms after the last frame on one CPU thread; at the production
settings the bimodal graph alone took 17 ms there for up to 96 tiles in runs of 16).

The two graphs are cut out of the exported bimodal ONNX (`onnx.utils.Extractor`), not exported again from
torch: they are that graph's own nodes and weights, and a model exported before the cut existed (whose
checkpoint was not kept) gets them as well (`isic-model split-graph`). `split_bimodal` refuses a cut that is
not ATC-ready or whose encoder-then-fusion differs from the bimodal graph on ONNX Runtime.
"""

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort

from isic_common.errors import ModelError
from isic_model.graph_checks import ORT_TOLERANCE, graph_problems
from isic_model.manifest_doc import read_manifest_doc, write_manifest_doc
from isic_station.inference.base import GRAPH_BIMODAL, GRAPH_FUSION, GRAPH_TILE_ENCODER
from isic_station.inference.batches import TileGraph
from isic_station.inference.tile_encoder import INPUT_IMAGE, OUTPUT_TILE_TOKENS
from isic_station.manifest import Manifest, file_sha256

log = logging.getLogger(__name__)

# The TorchScript exporter names nodes by module path: `ISiCNet.image.norm`, the encoder's closing LayerNorm.
ENCODER_SCOPE = "/net/image/norm/"
TILE_ENCODER_ONNX = "isicnet_tile_encoder.onnx"
FUSION_ONNX = "isicnet_fusion.onnx"
# Tiles per tile-encoder run: at the production settings a frame's tiles among the best 96 so far number
# 30 at first and a few by the last frame (about 14 on average); 8 keeps the padding of a frame's last run small.
TILE_ENCODER_BATCH = 8
CHECK_SEED = 20261203


def encoder_output(model: onnx.ModelProto) -> Optional[str]:
    """The tensor the image encoder hands to the rest of the graph (None: a graph without an image encoder)."""
    inside = [node for node in model.graph.node if node.name.startswith(ENCODER_SCOPE)]
    produced = {name for node in inside for name in node.output}
    crossing = sorted({name for node in model.graph.node if not node.name.startswith(ENCODER_SCOPE)
                       for name in node.input if name in produced})
    if len(crossing) > 1:
        raise ModelError(f"the image encoder hands {crossing} to the fusion; the cut needs exactly one tensor")
    return crossing[0] if crossing else None


def _renamed(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """`model` with tensor `old` called `new` wherever it appears (inputs, outputs, nodes)."""
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if value.name == old:
            value.name = new
    return model


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """The encoder with a static tile batch of `batch` (its reshapes keep the batch as -1), shapes re-inferred."""
    del model.graph.value_info[:]
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _dims(value: onnx.ValueInfoProto) -> List[int]:
    return [int(dim.dim_value) for dim in value.type.tensor_type.shape.dim]


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _difference(bimodal: Path, encoder: Path, fusion: Path, inputs: Mapping[str, Any]) -> float:
    """Largest |bimodal - fusion(encoder)| on ONNX Runtime for random inputs of the bimodal graph's shapes."""
    rng = np.random.default_rng(CHECK_SEED)
    feeds = {doc["name"]: rng.normal(size=doc["shape"]).astype(np.float32) for doc in inputs}
    if "fibre_counts" in feeds:
        feeds["fibre_counts"] = np.abs(feeds["fibre_counts"]) * 20.0
    expected = _session(bimodal).run(None, feeds)
    tiles = feeds.pop(INPUT_IMAGE)
    encode = _session(encoder)
    tokens = TileGraph(lambda chunk: encode.run(None, {INPUT_IMAGE: chunk})[0], TILE_ENCODER_BATCH, ()).rows(tiles)
    got = _session(fusion).run(None, dict(feeds, **{OUTPUT_TILE_TOKENS: tokens}))
    return max(float(np.abs(a - b).max()) for a, b in zip(expected, got))


def split_bimodal(folder: Path, graphs: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Write the tile-encoder and fusion graphs of the manifest `graphs`' bimodal graph into `folder`; their
    manifest `graphs` entries ({} when the bimodal graph has no image encoder: the signal ablation).

    ModelError when the cut is not ATC-ready or encoder-then-fusion differs from the bimodal graph.
    """
    bimodal_doc = graphs[GRAPH_BIMODAL]
    bimodal_path = folder / bimodal_doc["onnx"]
    model = onnx.load(str(bimodal_path))
    cut = encoder_output(model)
    if cut is None:
        return {}
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))   # value_info names the cut
    others = [doc["name"] for doc in bimodal_doc["inputs"] if doc["name"] != INPUT_IMAGE]
    outputs = [doc["name"] for doc in bimodal_doc["outputs"]]
    encoder = _with_batch(_renamed(extractor.extract_model([INPUT_IMAGE], [cut]), cut, OUTPUT_TILE_TOKENS),
                          TILE_ENCODER_BATCH)
    fusion = _renamed(extractor.extract_model(others[:1] + [cut] + others[1:], outputs), cut, OUTPUT_TILE_TOKENS)
    paths = {GRAPH_TILE_ENCODER: folder / TILE_ENCODER_ONNX, GRAPH_FUSION: folder / FUSION_ONNX}
    onnx.save(encoder, str(paths[GRAPH_TILE_ENCODER]))
    onnx.save(fusion, str(paths[GRAPH_FUSION]))
    for path in paths.values():
        problems = graph_problems(path)
        if problems:
            raise ModelError(f"graph {path} cut from {bimodal_path} is not ATC-ready: " + "; ".join(problems))
    diff = _difference(bimodal_path, paths[GRAPH_TILE_ENCODER], paths[GRAPH_FUSION], bimodal_doc["inputs"])
    if diff > ORT_TOLERANCE:
        raise ModelError(f"tile encoder then fusion differ from {bimodal_path} by {diff:.2e} "
                         f"(limit {ORT_TOLERANCE:.0e})")
    log.info("cut %s after the image encoder into %s and %s (max diff %.1e)", bimodal_path.name,
             TILE_ENCODER_ONNX, FUSION_ONNX, diff)
    image_doc = next(doc for doc in bimodal_doc["inputs"] if doc["name"] == INPUT_IMAGE)
    token_shape = _dims(encoder.graph.output[0])[1:]
    rows = int(bimodal_doc["inputs"][0]["shape"][0])
    tokens_doc = {"name": OUTPUT_TILE_TOKENS, "dtype": "float32",
                  "meaning": "the tile encoder's tokens of each tile (class token first), one row per tile"}
    return {
        GRAPH_TILE_ENCODER: {
            "onnx": TILE_ENCODER_ONNX,
            "sha256": file_sha256(paths[GRAPH_TILE_ENCODER]),
            "inputs": [dict(image_doc, shape=[TILE_ENCODER_BATCH] + image_doc["shape"][1:],
                            meaning="normalised tiles (see `image`): a frame's usable tiles as it arrives, in "
                                    "batches of this size, the last padded")],
            "outputs": [dict(tokens_doc, shape=[TILE_ENCODER_BATCH] + token_shape)],
        },
        GRAPH_FUSION: {
            "onnx": FUSION_ONNX,
            "sha256": file_sha256(paths[GRAPH_FUSION]),
            "inputs": [dict(tokens_doc, shape=[rows] + token_shape) if doc["name"] == INPUT_IMAGE else doc
                       for doc in bimodal_doc["inputs"]],
            "outputs": list(bimodal_doc["outputs"]),
        },
    }


def add_split_graphs(manifest: Manifest) -> Dict[str, Dict[str, Any]]:
    """Cut `manifest`'s bimodal graph (`split_bimodal`) and record the two graphs in its manifest.json; the
    entries added ({} when there is no image encoder to cut after)."""
    doc = read_manifest_doc(manifest.path)
    added = split_bimodal(manifest.path.parent, doc["graphs"])
    if added:
        doc["graphs"].update(added)
        write_manifest_doc(manifest.path, doc)
    return added

"""Export a trained ISiC-Net to the ONNX graphs the station runs, and write their manifest.

The graphs: `bimodal` (spectrum, tiles and, with a fibre counter, the counted `fibre_counts`),
`signal_only`, `tile_encoder` and `fusion` (the bimodal graph cut after its image encoder, `split_graph`),
and `counter` (the per-tile fibre counter, a static batch of tiles) when there is one.
A network trained with the room temperature (`use_temperature`) has a `temperature` input on both
of its graphs, and the manifest a `temperature_input` saying how the station scales the reading.

Both graphs are ONNX opset 11 with static shapes (what ATC on CANN 5.x accepts), every node's op
type must be on `atc_allowlist.txt`, `onnx.checker` must pass, and ONNX Runtime must reproduce
torch's outputs; `export_model` refuses to write a manifest for graphs that fail any of these.
"""

import datetime as dt
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from isic_common.errors import ModelError
from isic_drivers.lab.sample import trained_ranges
from isic_model.graph_checks import OPSET, ORT_TOLERANCE, graph_problems
from isic_model.manifest_doc import write_manifest_doc
from isic_model.net import BimodalGraph, CounterGraph, FibreCounter, ISiCNet, NetConfig, SignalOnlyGraph
from isic_model.split_graph import split_bimodal
from isic_station.manifest import file_sha256
from isic_station.preprocess.room import DEFAULT_TEMPERATURE_INPUT, TEMPERATURE_FEATURES

log = logging.getLogger(__name__)

BIMODAL_ONNX = "isicnet.onnx"
SIGNAL_ONNX = "isicnet_signal.onnx"
COUNTER_ONNX = "isicnet_counter.onnx"
MANIFEST_NAME = "manifest.json"
# The counter's outputs are lengths (not fractions) through BatchNorm-folded convolutions: relative to
# its largest output, 10x looser (a 1e-3 relative error in a count is far below its sampling noise).
COUNTER_TOLERANCE_FACTOR = 10.0


def export_graph(
    module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], output_names: Sequence[str], path: Path
) -> None:
    """TorchScript-based ONNX export at opset 11, static shapes, constants folded."""
    module.eval()
    # The TorchScript exporter is the one that still writes opset 11; its deprecation notice and the
    # tracer's notes on constant sizes (static shapes are the point) are expected.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(inputs),
            output_names=list(output_names),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def onnx_outputs(path: Path, inputs: Mapping[str, torch.Tensor]) -> List[np.ndarray]:
    """The graph's outputs under ONNX Runtime (CPU) for these inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: t.numpy() for name, t in inputs.items()})


def max_difference(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], path: Path) -> float:
    """Largest |ONNX Runtime - torch| over all outputs for these inputs."""
    module.eval()
    with torch.no_grad():
        expected = [t.numpy() for t in _outputs(module(*inputs.values()))]
    got = onnx_outputs(path, inputs)
    return max(float(np.abs(a - b).max()) for a, b in zip(expected, got))


def _tensor(name: str, shape: Sequence[int], meaning: str) -> Dict[str, Any]:
    return {"name": name, "shape": [int(s) for s in shape], "dtype": "float32", "meaning": meaning}


def example_inputs(
    cfg: NetConfig, tiles: int, seed: int = 0
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Random inputs of the exported shapes: (bimodal, signal-only); `temperature` only with `use_temperature`."""
    gen = torch.Generator().manual_seed(seed)
    spectrum = torch.randn(1, cfg.spectrum_points, generator=gen)
    image = torch.randn(tiles, cfg.channels, cfg.tile_px, cfg.tile_px, generator=gen)
    counts = torch.rand(1, cfg.n_fibres, generator=gen) * 50.0
    bimodal = {"spectrum": spectrum.expand(tiles, -1).contiguous(), "image": image,
               "fibre_counts": counts.expand(tiles, -1).contiguous()}
    signal = {"spectrum": spectrum}
    if cfg.use_temperature:
        room = torch.tensor([[0.6, 1.0]])   # a 34 degC room, read by the sensor
        bimodal["temperature"] = room.expand(tiles, -1).contiguous()
        signal["temperature"] = room
    return bimodal, signal


def _checked(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], output_names: Sequence[str],
             path: Path) -> float:
    """Export, then ModelError unless the graph is ATC-ready and ONNX Runtime agrees with torch; the max diff."""
    export_graph(module, inputs, output_names, path)
    problems = graph_problems(path)
    if problems:
        raise ModelError(f"exported graph {path} is not ATC-ready: " + "; ".join(problems))
    diff = max_difference(module, inputs, path)
    limit = ORT_TOLERANCE * (COUNTER_TOLERANCE_FACTOR * _output_scale(module, inputs)
                             if isinstance(module, CounterGraph) else 1.0)
    if diff > limit:
        raise ModelError(f"ONNX Runtime differs from torch by {diff:.2e} on {path} (limit {limit:.1e})")
    return diff


def _output_scale(module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> float:
    """The largest |output|, at least 1."""
    with torch.no_grad():
        return max([1.0] + [float(t.abs().max()) for t in _outputs(module(*inputs.values()))])


def _outputs(out: Any) -> Sequence[torch.Tensor]:
    """A graph module's outputs as a sequence (a one-output graph returns the bare tensor)."""
    return out if isinstance(out, (tuple, list)) else (out,)


def counter_inputs(counter: FibreCounter, tiles: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cfg = counter.cfg
    return {"image": torch.randn(tiles, cfg.channels, cfg.tile_px, cfg.tile_px, generator=gen)}


def export_counter_graph(counter: FibreCounter, tiles: int, path: Path) -> Dict[str, Any]:
    """Write the counter graph (image [T, C, P, P] -> fibre_length [T, F]); its manifest `graphs` entry."""
    counter.eval()
    module = CounterGraph(counter)
    inputs = counter_inputs(counter, tiles)
    diff = _checked(module, inputs, ("fibre_length",), path)
    shapes = [tuple(o.shape) for o in onnx_outputs(path, inputs)]
    if shapes != [(tiles, counter.cfg.n_fibres)]:
        raise ModelError(f"graph {path} outputs shapes {shapes}, the contract is [{tiles},F]")
    log.info("exported %s (%d bytes, ORT-torch max diff %.1e)", path, path.stat().st_size, diff)
    return {
        "onnx": path.name,
        "sha256": file_sha256(path),
        "inputs": [_tensor("image", inputs["image"].shape,
                           "normalised tiles (see `image`): every usable tile of a frame, in batches of this size, "
                           "the last padded")],
        "outputs": [_tensor("fibre_length", (tiles, counter.cfg.n_fibres),
                            "fibre length per type in each tile, in tile sides; the station sums the rows of real "
                            "tiles over all frames into the bimodal graph's fibre_counts")],
    }


def export_model(
    net: ISiCNet,
    out_dir: Path,
    fibres: Sequence[str],
    blend_classes: Sequence[str],
    spectrum_params: Dict[str, Any],
    image_params: Dict[str, Any],
    training: Dict[str, Any],
    metrics: Optional[Dict[str, Any]] = None,
    model_version: str = "1",
    counter: Optional[FibreCounter] = None,
) -> Path:
    """Write isicnet.onnx, isicnet_signal.onnx, the tile encoder and fusion cut from isicnet.onnx (a net with an
    image encoder), isicnet_counter.onnx with a `counter`, and manifest.json into out_dir; return the manifest
    path. Without a counter the bimodal graph has no `fibre_counts`.

    ModelError when a graph fails the ATC checks or ONNX Runtime disagrees with torch.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = net.cfg
    tiles = int(image_params["tiles_per_measurement"])
    if cfg.channels != int(image_params["channels"]) or cfg.tile_px != int(image_params["tile_px"]):
        raise ModelError(
            f"network expects {cfg.channels}x{cfg.tile_px}px tiles, image params say "
            f"{image_params['channels']}x{image_params['tile_px']}px"
        )
    bimodal_inputs, signal_inputs = example_inputs(cfg, tiles)
    if counter is None:
        del bimodal_inputs["fibre_counts"]
    outputs = ("composition", "blend_logits")
    graphs = {}
    for key, module, inputs, fname in (
        ("bimodal", BimodalGraph(net, with_counts=counter is not None), bimodal_inputs, BIMODAL_ONNX),
        ("signal_only", SignalOnlyGraph(net), signal_inputs, SIGNAL_ONNX),
    ):
        path = out_dir / fname
        diff = _checked(module, inputs, outputs, path)
        b = inputs["spectrum"].shape[0]
        shapes = [tuple(o.shape) for o in onnx_outputs(path, inputs)]
        if shapes != [(b, len(fibres)), (b, len(blend_classes))]:
            raise ModelError(f"graph {path} outputs shapes {shapes}, the contract is [{b},F] and [{b},K]")
        tensor_inputs = [
            _tensor("spectrum", inputs["spectrum"].shape, "preprocessed spectrum (see `spectrum`), one row per tile")
        ]
        if "image" in inputs:
            tensor_inputs.append(_tensor("image", inputs["image"].shape, "normalised microscope tiles (see `image`)"))
        if "fibre_counts" in inputs:
            tensor_inputs.append(_tensor("fibre_counts", inputs["fibre_counts"].shape,
                                         "fibre length per type the counter found on every usable tile of every "
                                         "frame (tile sides), one row per tile"))
        if "temperature" in inputs:
            tensor_inputs.append(_tensor("temperature", (b, TEMPERATURE_FEATURES),
                                         "the room by the spectrometer's sensor, scaled as `temperature_input` says, "
                                         "and 1; zeros without a reading; one row per tile"))
        graphs[key] = {
            "onnx": fname,
            "sha256": file_sha256(path),
            "inputs": tensor_inputs,
            "outputs": [
                _tensor(
                    "composition", (b, len(fibres)), "mass fractions over `fibres` per row; rows sum to 1; average rows"
                ),
                _tensor(
                    "blend_logits",
                    (b, len(blend_classes)),
                    "logits over `blend_classes` per row; average rows, then argmax",
                ),
            ],
        }
        log.info("exported %s (%d bytes, ORT-torch max diff %.1e)", path, path.stat().st_size, diff)
    graphs.update(split_bimodal(out_dir, graphs))
    if counter is not None:
        tiles_per_run = int(training.get("counter", {}).get("config", {}).get("tiles_per_run", 8))
        graphs["counter"] = export_counter_graph(counter, tiles_per_run, out_dir / COUNTER_ONNX)
    manifest = {
        "manifest_version": 1,
        "model": {
            "name": "isicnet",
            "version": model_version,
            "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        },
        "fibres": list(fibres),
        "blend_classes": list(blend_classes),
        "spectrum": spectrum_params,
        "image": image_params,
        "graphs": graphs,
        "training": dict(training, network=cfg.to_dict()),
    }
    if cfg.use_temperature:
        manifest["temperature_input"] = dict(DEFAULT_TEMPERATURE_INPUT)
    if "preset" in training:  # the conditions its training met, which the station checks what it measures of
        manifest["conditions"] = trained_ranges(training["preset"])
    if metrics is not None:
        manifest["metrics"] = metrics
    path = out_dir / MANIFEST_NAME
    write_manifest_doc(path, manifest)
    return path

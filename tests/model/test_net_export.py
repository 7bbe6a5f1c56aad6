"""ISiC-Net: shapes and module switches, and the ONNX export the Ascend toolchain can take."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from isic_common.errors import ModelError
from isic_model.export import example_inputs, export_counter_graph, export_graph, export_model, max_difference
from isic_model.graph_checks import ORT_TOLERANCE, graph_op_types, graph_problems, load_allowlist
from isic_model.net import (
    COUNT_SKIP_FLOOR,
    BimodalGraph,
    CounterConfig,
    FibreCounter,
    ISiCNet,
    NetConfig,
    SignalOnlyGraph,
)
from isic_model.split_graph import TILE_ENCODER_BATCH
from isic_station.inference.predictor import Predictor
from isic_station.inference.registry import create_backend
from isic_station.manifest import load_manifest, verify_graph_file

SMALL = dict(
    spectrum_points=40,
    n_fibres=5,
    n_classes=7,
    tile_px=32,
    dim=16,
    depth=1,
    heads=2,
    mlp_dim=32,
    signal_tokens=4,
    signal_hidden=32,
    head_hidden=32,
)
ABLATION = {
    "signal": dict(use_image=False, use_rg=False, use_isica=False, use_rec=False),
    "image": dict(use_rg=False, use_isica=False, use_rec=False),
    "rg": dict(use_isica=False, use_rec=False),
    "isica": dict(use_rec=False),
    "full": dict(),
}


FIBRES = ["cotton", "linen", "viscose", "polyester", "nylon"]
CLASSES = FIBRES + ["cotton/linen", "cotton/linen/nylon"]


def _net(**flags):
    torch.manual_seed(0)
    return ISiCNet(NetConfig(**SMALL, **flags))


def _preprocessing(savgol=None, **image_extra):
    """The spectrum and image preprocessing records `export_model` writes into a small model's manifest."""
    spectrum = {"wavelengths_nm": np.linspace(950, 1650, 40).tolist(), "reflectance_clip": [0.01, 1.2],
                "scatter": "snv", "savgol": savgol, "mean": [0.0] * 40, "std": [1.0] * 40}
    image = {"tile_px": 32, "um_per_px": 1.0, "channels": 1, "tiles_per_measurement": 4, "mean": 0.5, "std": 0.2,
             **image_extra}
    return spectrum, image


@pytest.mark.parametrize("variant", sorted(ABLATION))
def test_every_ablation_variant_trains_and_gives_fractions(variant):
    net = _net(**ABLATION[variant]).train()
    spectrum, tiles = torch.randn(3, 40), torch.randn(3, 4, 1, 32, 32)
    mask = torch.rand(12, net.cfg.n_patches) < 0.2
    out = net(spectrum, tiles, image_present=torch.tensor([True, False, True]), patch_mask=mask)
    rows = 1 if variant == "signal" else 4
    assert out["composition"].shape == (3, rows, 5) and out["blend_logits"].shape == (3, rows, 7)
    torch.testing.assert_close(out["composition"].sum(-1), torch.ones(3, rows))
    assert ("spectrum_rec" in out) == (variant == "full")
    assert ("patch_rec" in out) == (variant == "full")
    loss = out["composition"].square().sum() + out["blend_logits"].square().sum()
    loss.backward()
    assert net.signal.w1.weight.grad is not None


def test_rows_see_every_tile_of_the_measurement():
    """Changing one tile changes the other rows too (the mean over tiles reaches every row)."""
    net = _net().eval()
    spectrum, tiles = torch.randn(1, 40), torch.randn(1, 4, 1, 32, 32)
    with torch.no_grad():
        before = net(spectrum, tiles)["composition"][0, 1]
        tiles[0, 0] = torch.randn(1, 32, 32)
        after = net(spectrum, tiles)["composition"][0, 1]
    assert not torch.allclose(before, after)


def test_image_absent_rows_equal_the_signal_only_path():
    """Modality dropout uses the same null features as the signal-only graph."""
    net = _net().eval()
    spectrum, tiles = torch.randn(2, 40), torch.randn(2, 4, 1, 32, 32)
    with torch.no_grad():
        dropped = net(spectrum, tiles, image_present=torch.tensor([False, False]))["composition"][:, 0]
        alone = net(spectrum)["composition"][:, 0]
    torch.testing.assert_close(dropped, alone)


@pytest.mark.parametrize("variant", ["signal", "image", "full"])
def test_export_is_static_opset11_allowlisted_and_matches_torch(tmp_path, variant):
    net = _net(**ABLATION[variant]).eval()
    bimodal, signal = example_inputs(net.cfg, tiles=4)
    for module, inputs, name in ((BimodalGraph(net), bimodal, "b.onnx"), (SignalOnlyGraph(net), signal, "s.onnx")):
        path = tmp_path / name
        export_graph(module, inputs, ("composition", "blend_logits"), path)
        assert graph_problems(path) == []
        assert graph_op_types(path) <= load_allowlist()
        assert max_difference(module, inputs, path) <= ORT_TOLERANCE


def test_graph_problems_names_an_op_atc_cannot_parse(tmp_path):
    class Cumulative(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    path = tmp_path / "cumsum.onnx"
    export_graph(Cumulative(), {"x": torch.randn(2, 3)}, ("y",), path)
    problems = graph_problems(path)
    assert any("CumSum" in p for p in problems), problems


def test_export_model_writes_a_manifest_the_station_loads(tmp_path):
    net = _net().eval()
    spectrum, image = _preprocessing(savgol={"window": 7, "polyorder": 2, "deriv": 1})
    path = export_model(net, tmp_path, FIBRES, CLASSES, spectrum, image, {"seed": 1}, metrics={"accuracy": 0.5})
    manifest = load_manifest(path)
    assert manifest.fibres == tuple(FIBRES) and manifest.blend_classes == tuple(CLASSES)
    assert manifest.graphs["bimodal"].inputs[1].shape == (4, 1, 32, 32)
    assert manifest.graphs["signal_only"].inputs[0].shape == (1, 40)
    assert manifest.graphs["bimodal"].output("composition").shape == (4, 5)
    for graph in manifest.graphs.values():
        verify_graph_file(graph)
    assert json.loads(path.read_text())["training"]["network"]["dim"] == 16


@pytest.mark.parametrize("variant", ["image", "full"])
def test_the_bimodal_graph_cut_after_its_image_encoder_answers_as_torch_does(tmp_path, variant):
    """Tiles through the tile encoder (its own static batch, padded), their tokens through the fusion: the
    bimodal graph's answer, as torch gives it."""
    net = _net(**ABLATION[variant]).eval()
    spectrum, image = _preprocessing()
    manifest = load_manifest(export_model(net, tmp_path, FIBRES, CLASSES, spectrum, image, {"seed": 1}))
    encoder, fusion = manifest.graphs["tile_encoder"], manifest.graphs["fusion"]
    assert encoder.inputs[0].shape == (TILE_ENCODER_BATCH, 1, 32, 32)
    assert encoder.output("tile_tokens").shape == (TILE_ENCODER_BATCH, 17, 16)   # class token + 4x4 patches, dim 16
    assert [(t.name, t.shape) for t in fusion.inputs] == [("spectrum", (4, 40)), ("tile_tokens", (4, 17, 16))]
    for graph in (encoder, fusion):
        verify_graph_file(graph)
        assert graph_problems(graph.onnx_path) == []
    rng = np.random.default_rng(3)
    rows = np.repeat(rng.normal(size=(1, 40)), 4, 0).astype(np.float32)
    tiles = rng.normal(size=(4, 1, 32, 32)).astype(np.float32)
    padded = np.concatenate([tiles, tiles[:TILE_ENCODER_BATCH - 4]])
    tokens = ort.InferenceSession(str(encoder.onnx_path)).run(None, {"image": padded})[0][:4]
    got = ort.InferenceSession(str(fusion.onnx_path)).run(None, {"spectrum": rows, "tile_tokens": tokens})
    with torch.no_grad():
        expected = BimodalGraph(net, with_counts=False)(torch.from_numpy(rows), torch.from_numpy(tiles))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b.numpy(), atol=ORT_TOLERANCE)


def test_a_net_without_an_image_encoder_has_nothing_to_cut(tmp_path):
    spectrum, image = _preprocessing()
    manifest = load_manifest(export_model(_net(**ABLATION["signal"]).eval(), tmp_path, FIBRES, CLASSES, spectrum,
                                          image, {"seed": 1}))
    assert sorted(manifest.graphs) == ["bimodal", "signal_only"]


def _counter():
    torch.manual_seed(1)
    return FibreCounter(CounterConfig(n_fibres=5, channels=1, tile_px=32, widths=(4, 8, 8, 8))).eval()


def test_counter_graph_is_static_opset11_allowlisted_and_counts_per_tile(tmp_path):
    counter = _counter()
    path = tmp_path / "counter.onnx"
    entry = export_counter_graph(counter, 6, path)
    assert graph_problems(path) == [] and graph_op_types(path) <= load_allowlist()
    assert entry["inputs"][0]["shape"] == [6, 1, 32, 32] and entry["outputs"][0]["shape"] == [6, 5]
    tiles = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        lengths = counter(tiles)
    assert (lengths >= 0).all()
    # Each row is its own tile's: a tile's count does not depend on the others in the batch.
    with torch.no_grad():
        alone = counter(torch.cat([tiles[:1], torch.zeros(5, 1, 32, 32)]))
    torch.testing.assert_close(alone[0], lengths[0], atol=1e-5, rtol=1e-5)


def test_export_with_a_counter_writes_three_graphs_and_the_counts_reach_the_answer(tmp_path):
    net = _net().eval()
    spectrum, image = _preprocessing(camera_um_per_px_range=[0.8, 1.6])
    path = export_model(net, tmp_path, FIBRES, CLASSES, spectrum, image, {"counter": {"config": {"tiles_per_run": 3}}},
                        counter=_counter())
    manifest = load_manifest(path)
    assert sorted(manifest.graphs) == ["bimodal", "counter", "fusion", "signal_only", "tile_encoder"]
    assert [t.name for t in manifest.graphs["fusion"].inputs] == ["spectrum", "tile_tokens", "fibre_counts"]
    assert [t.name for t in manifest.graphs["bimodal"].inputs] == ["spectrum", "image", "fibre_counts"]
    assert manifest.graphs["bimodal"].inputs[2].shape == (4, 5)
    assert manifest.graphs["counter"].inputs[0].shape == (3, 1, 32, 32)
    for graph in manifest.graphs.values():
        verify_graph_file(graph)
        assert graph_problems(graph.onnx_path) == []
    session = ort.InferenceSession(str(manifest.graphs["bimodal"].onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"spectrum": np.repeat(rng.normal(size=(1, 40)), 4, 0).astype(np.float32),
             "image": rng.normal(size=(4, 1, 32, 32)).astype(np.float32),
             "fibre_counts": np.repeat([[40.0, 5.0, 0.0, 0.0, 0.0]], 4, 0).astype(np.float32)}
    cotton_heavy = session.run(None, feeds)[0]
    feeds["fibre_counts"] = np.repeat([[5.0, 40.0, 0.0, 0.0, 0.0]], 4, 0).astype(np.float32)
    assert not np.allclose(cotton_heavy, session.run(None, feeds)[0], atol=1e-5)


def test_count_skip_starts_from_the_counted_shares_and_exports_on_the_allowlist(tmp_path):
    """With the trunk's logits equal across fibres, the untrained skip gives the counted shares (floored);
    it stays opset 11 / allow-listed and ORT equals torch."""
    net = _net(count_skip=True).eval()
    with torch.no_grad():
        net.composition_head.weight.zero_()
        net.composition_head.bias.zero_()
    counts = torch.tensor([[60.0, 30.0, 0.0, 10.0, 0.0]])
    with torch.no_grad():
        composition = net(torch.randn(1, 40), torch.randn(1, 4, 1, 32, 32), counts=counts)["composition"][0, 0]
    floored = counts[0] / counts.sum() + COUNT_SKIP_FLOOR
    torch.testing.assert_close(composition, floored / floored.sum(), atol=1e-3, rtol=0)
    bimodal, _ = example_inputs(net.cfg, tiles=4)
    module = BimodalGraph(net)
    path = tmp_path / "skip.onnx"
    export_graph(module, bimodal, ("composition", "blend_logits"), path)
    assert graph_problems(path) == [] and graph_op_types(path) <= load_allowlist()
    assert max_difference(module, bimodal, path) <= ORT_TOLERANCE


def _export_with_temperature(tmp_path):
    """A small model trained-looking with the room temperature: FiLM weights set, so the reading matters."""
    net = _net(use_temperature=True).eval()
    with torch.no_grad():
        net.signal.film_scale.weight.normal_(0.0, 0.5)
        net.signal.film_shift.weight.normal_(0.0, 0.5)
    spectrum, image = _preprocessing()
    return net, export_model(net, tmp_path, FIBRES, CLASSES, spectrum, image, {"seed": 1})


def test_a_model_with_the_room_temperature_takes_it_on_both_graphs_and_the_station_feeds_it(tmp_path):
    net, path = _export_with_temperature(tmp_path)
    manifest = load_manifest(path)
    assert manifest.temperature_input == {"reference_c": 22.0, "scale_k": 20.0}
    assert [t.name for t in manifest.graphs["bimodal"].inputs] == ["spectrum", "image", "temperature"]
    assert [(t.name, t.shape) for t in manifest.graphs["signal_only"].inputs] == [("spectrum", (1, 40)),
                                                                                 ("temperature", (1, 2))]
    for graph in manifest.graphs.values():
        assert graph_problems(graph.onnx_path) == []
    rng = np.random.default_rng(3)
    spectrum = rng.normal(size=40).astype(np.float32)
    tiles = rng.normal(size=(4, 1, 32, 32)).astype(np.float32)
    with create_backend("onnxruntime", manifest, {"threads": 1}) as backend:
        backend.load()
        predictor = Predictor(manifest, backend)
        for batch in (tiles, None):
            cold = predictor.predict_preprocessed(spectrum, batch, temperature_c=8.0).composition
            warm = predictor.predict_preprocessed(spectrum, batch, temperature_c=40.0).composition
            unread = predictor.predict_preprocessed(spectrum, batch, temperature_c=None).composition
            assert not np.allclose(list(cold.values()), list(warm.values()), atol=1e-4)
            # No reading is the [0, 0] row torch sees when it is given no temperature at all.
            with torch.no_grad():
                args = (torch.from_numpy(spectrum)[None], None if batch is None else torch.from_numpy(batch)[None])
                expected = net(*args)["composition"][0].mean(dim=0).numpy()
            np.testing.assert_allclose(list(unread.values()), expected, atol=1e-4)


def test_a_manifest_whose_graphs_take_temperature_without_temperature_input_is_refused(tmp_path):
    _, path = _export_with_temperature(tmp_path)
    doc = json.loads(path.read_text())
    del doc["temperature_input"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"take 'temperature' but there is no temperature_input"):
        load_manifest(path)

"""Predictor: the right graph per case, fusion over tiles, uncertainty, timings."""

import numpy as np
import pytest

from fakes import measurement
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.inference.predictor import Predictor, softmax
from isic_station.preprocess.image import build_image_batch
from isic_station.preprocess.spectrum import preprocess_spectrum


@pytest.fixture
def backend(tiny_manifest):
    backend = OnnxRuntimeBackend(tiny_manifest)
    backend.load()
    yield backend
    backend.close()


def test_bimodal_prediction_fuses_tile_rows(tiny_manifest, backend):
    rng = np.random.default_rng(3)
    refl, frames = measurement.reflectance(rng), measurement.frames(rng)
    prediction = Predictor(tiny_manifest, backend).predict(refl, measurement.INSTRUMENT_NM, frames, 1.0)

    spectrum = preprocess_spectrum(refl, measurement.INSTRUMENT_NM, tiny_manifest.spectrum)
    tiles = build_image_batch(frames, 1.0, tiny_manifest.image)
    rows = backend.run("bimodal", {"spectrum": np.tile(spectrum, (4, 1)), "image": tiles})
    probabilities = softmax(rows["blend_logits"].astype(np.float64)).mean(axis=0)

    assert not prediction.signal_only
    assert list(prediction.composition) == ["cotton", "polyester", "wool"]
    np.testing.assert_allclose(list(prediction.composition.values()), rows["composition"].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(list(prediction.uncertainty.values()), rows["composition"].std(axis=0), atol=1e-6)
    assert max(prediction.uncertainty.values()) > 0  # the tiles differ, so must the rows
    np.testing.assert_allclose(list(prediction.blend_probabilities.values()), probabilities, atol=1e-6)
    assert prediction.blend == tiny_manifest.blend_classes[int(np.argmax(probabilities))]
    assert prediction.confidence == pytest.approx(probabilities.max())
    assert sum(prediction.composition.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(prediction.timings_ms) == {"preprocess_ms", "infer_ms"}
    assert all(t > 0 for t in prediction.timings_ms.values())
    assert prediction.backend == "onnxruntime"


@pytest.mark.parametrize("no_frames", [None, []])
def test_without_frames_the_signal_only_graph_answers(tiny_manifest, backend, no_frames):
    refl = measurement.reflectance(np.random.default_rng(4))
    prediction = Predictor(tiny_manifest, backend).predict(refl, measurement.INSTRUMENT_NM, no_frames, 1.0)

    spectrum = preprocess_spectrum(refl, measurement.INSTRUMENT_NM, tiny_manifest.spectrum)
    row = backend.run("signal_only", {"spectrum": spectrum[None, :]})
    assert prediction.signal_only
    np.testing.assert_allclose(list(prediction.composition.values()), row["composition"][0], atol=1e-6)
    assert set(prediction.uncertainty.values()) == {0.0}
    assert prediction.confidence == pytest.approx(softmax(row["blend_logits"][0].astype(np.float64)).max())


def test_preprocessed_call_gives_the_same_prediction(tiny_manifest, backend):
    rng = np.random.default_rng(5)
    refl, frames = measurement.reflectance(rng), measurement.frames(rng)
    predictor = Predictor(tiny_manifest, backend)
    full = predictor.predict(refl, measurement.INSTRUMENT_NM, frames, 1.0)
    spectrum = preprocess_spectrum(refl, measurement.INSTRUMENT_NM, tiny_manifest.spectrum)
    direct = predictor.predict_preprocessed(spectrum, build_image_batch(frames, 1.0, tiny_manifest.image))
    assert direct.composition == full.composition
    assert direct.blend_probabilities == full.blend_probabilities
    assert set(direct.timings_ms) == {"infer_ms"}


def test_softmax_does_not_overflow_on_large_logits():
    probabilities = softmax(np.array([[1000.0, 999.0, -1000.0]]))
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities[0, :2], [0.7310586, 0.2689414], atol=1e-6)


def test_more_tiles_than_the_graph_batch_run_in_batches_and_average_every_tile(tiny_manifest_path):
    """`max_tiles` above the graph's static batch (4 rows here): 10 tiles run as 4 + 4 + 2 (padded to 4),
    the padding's answers dropped, and the fusion averages the 10 tiles' rows."""
    import json

    from isic_station.manifest import load_manifest

    raw = json.loads(tiny_manifest_path.read_text())
    raw["image"]["max_tiles"] = 10
    tiny_manifest_path.write_text(json.dumps(raw))
    manifest = load_manifest(tiny_manifest_path)
    backend = OnnxRuntimeBackend(manifest)
    backend.load()
    try:
        rng = np.random.default_rng(6)
        refl, frames = measurement.reflectance(rng), measurement.frames(rng) + measurement.frames(rng)
        tiles = build_image_batch(frames, 1.0, manifest.image)
        assert len(tiles) == 10   # the frames hold more usable tiles than that
        spectrum = preprocess_spectrum(refl, measurement.INSTRUMENT_NM, manifest.spectrum)
        predictor = Predictor(manifest, backend)
        rows = predictor.infer(spectrum, tiles)
        assert rows["composition"].shape[0] == 10 and rows["blend_logits"].shape[0] == 10
        padded = np.concatenate([tiles[8:], tiles[8:]])
        by_hand = [backend.run("bimodal", {"spectrum": np.tile(spectrum, (4, 1)), "image": chunk})["composition"]
                   for chunk in (tiles[:4], tiles[4:8], padded)]
        np.testing.assert_allclose(rows["composition"], np.concatenate(by_hand)[:10], atol=1e-6)
        prediction = predictor.predict(refl, measurement.INSTRUMENT_NM, frames, 1.0)
        np.testing.assert_allclose(list(prediction.composition.values()), rows["composition"].mean(axis=0),
                                   atol=1e-6)
    finally:
        backend.close()

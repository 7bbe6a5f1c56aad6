"""The fibre counter graph (v5 models): counted over every usable tile of every frame, fed to the bimodal graph.

Black-box on the tiny counter model (tests/fakes/tiny_isicnet.py, `counter=True`) with real ONNX Runtime
and the FAKE acl: the counts are the counter graph's rows summed over exactly the usable tiles (padding of
the static batch and masked tiles count for nothing), the streamed builder and the one-shot predictor
agree, and the counts reach the answer.
"""

import sys

import numpy as np
import pytest

from fakes import measurement
from fakes.fake_acl import FakeAcl
from fakes.tiny_isicnet import COUNTER_TILES, model_weights, write_tiny_model
from isic_station.inference.acl_backend import AclBackend, finalize_pyacl
from isic_station.inference.counter import FibreCounter
from isic_station.inference.onnxruntime_backend import OnnxRuntimeBackend
from isic_station.inference.predictor import Predictor
from isic_station.manifest import load_manifest
from isic_station.preprocess.image import ImageParams, cut_frame
from isic_station.preprocess.image_stream import StreamedImage


@pytest.fixture
def counter_manifest(tmp_path):
    return load_manifest(write_tiny_model(tmp_path / "model", counter=True))


@pytest.fixture
def backend(counter_manifest):
    backend = OnnxRuntimeBackend(counter_manifest)
    backend.load()
    yield backend
    backend.close()


def _lengths(tiles: np.ndarray) -> np.ndarray:
    """The tiny counter recomputed in numpy: ReLU(pixels @ w_count) per tile."""
    return np.maximum(tiles.reshape(len(tiles), 16 * 16) @ model_weights(7)["w_count"], 0.0)


@pytest.mark.parametrize("n_tiles", [0, 1, COUNTER_TILES, 2 * COUNTER_TILES + 1])
def test_counts_are_the_rows_of_real_tiles_summed_whatever_the_static_batch(backend, n_tiles):
    tiles = np.random.default_rng(n_tiles).normal(size=(n_tiles, 1, 16, 16)).astype(np.float32)
    counter = FibreCounter.on_backend(backend)
    assert counter.batch == COUNTER_TILES
    np.testing.assert_allclose(counter(tiles), _lengths(tiles).sum(axis=0), rtol=1e-5, atol=1e-5)


def test_every_usable_tile_of_every_frame_is_counted_and_masked_ones_are_not(counter_manifest, backend):
    first = measurement.frames(np.random.default_rng(8), count=1)[0]
    glare = np.full_like(first, 255)   # all glare: no usable tile in this frame, so it adds nothing
    frames = [first, glare, first[:, ::-1].copy()]
    builder = Predictor(counter_manifest, backend).image_builder(1.0)
    for frame in frames:
        builder.add(frame)
    spec = ImageParams.from_manifest(counter_manifest.image)
    cut = [cut_frame(frame, 1.0, spec) for frame in frames]
    assert not cut[1].usable.any() and cut[0].usable.any() and cut[2].usable.any()
    expected = sum(_lengths(c.counted(spec)).sum(axis=0) for c in cut)
    np.testing.assert_allclose(builder.fibre_counts(), expected, rtol=1e-5, atol=1e-5)
    every_tile = sum(_lengths(c.normalised(np.arange(len(c.usable)), spec)).sum(axis=0) for c in cut)
    assert not np.allclose(every_tile, expected)   # the masked tiles would have counted
    # 20 tiles a frame, many more than the 4 the bimodal graph sees: the counter reads every usable one.
    assert sum(len(c.usable) for c in cut) == 60 > len(builder.batch())


def test_streamed_input_and_counts_give_the_one_shot_prediction(counter_manifest, backend):
    rng = np.random.default_rng(9)
    refl, frames = measurement.reflectance(rng), measurement.frames(rng, count=3)
    predictor = Predictor(counter_manifest, backend)
    builder = predictor.image_builder(1.0)
    for frame in frames:
        builder.add(frame)
    streamed = predictor.predict(refl, measurement.INSTRUMENT_NM, frames, 1.0, builder.built())
    one_shot = predictor.predict(refl, measurement.INSTRUMENT_NM, frames, 1.0)
    assert streamed.composition == pytest.approx(one_shot.composition, abs=1e-6)
    assert not one_shot.signal_only


def test_the_counts_reach_the_answer(counter_manifest, backend):
    rng = np.random.default_rng(10)
    refl, frames = measurement.reflectance(rng), measurement.frames(rng)
    predictor = Predictor(counter_manifest, backend)
    builder = predictor.image_builder(1.0)
    for frame in frames:
        builder.add(frame)
    batch, counts = builder.batch(), builder.fibre_counts()
    as_counted = predictor.predict(refl, measurement.INSTRUMENT_NM, frames, 1.0,
                                   StreamedImage(counter_manifest.image, batch, counts))
    other = predictor.predict(refl, measurement.INSTRUMENT_NM, frames, 1.0,
                              StreamedImage(counter_manifest.image, batch, counts[::-1] * 3.0))
    assert as_counted.composition != pytest.approx(other.composition, abs=1e-4)
    with pytest.raises(ValueError, match="fibre_counts"):
        predictor.infer(np.zeros(32, np.float32), batch)


def test_a_model_without_a_counter_has_no_counts(tiny_manifest):
    backend = OnnxRuntimeBackend(tiny_manifest)
    backend.load()
    try:
        builder = Predictor(tiny_manifest, backend).image_builder(1.0)
        builder.add(measurement.frames(np.random.default_rng(11))[0])
        assert builder.fibre_counts() is None and builder.batch() is not None
    finally:
        backend.close()


def test_the_npu_backend_runs_the_counter_graph_as_onnx_runtime_does(counter_manifest, backend, monkeypatch):
    fake = FakeAcl()
    monkeypatch.setitem(sys.modules, "acl", fake)
    npu = AclBackend(counter_manifest)
    npu.load()
    try:
        tiles = np.random.default_rng(12).normal(size=(COUNTER_TILES, 1, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(npu.run("counter", {"image": tiles})["fibre_length"],
                                   backend.run("counter", {"image": tiles})["fibre_length"], atol=1e-5)
        counts = FibreCounter.on_backend(npu)(np.concatenate([tiles, tiles[:1]]))
        np.testing.assert_allclose(counts, _lengths(np.concatenate([tiles, tiles[:1]])).sum(axis=0), atol=1e-4)
    finally:
        npu.close()
        finalize_pyacl()
    assert fake.violations == [] and fake.leaks() == []

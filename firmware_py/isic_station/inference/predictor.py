"""One measurement in, one fused Prediction out: preprocessing, the right graph, fusion over tiles.

The bimodal graph sees the same spectrum beside each of the B image tiles and answers per tile;
the station reports the mean over tiles and their spread as the uncertainty. Without usable
frames the signal-only graph answers alone (uncertainty 0, `signal_only` set), so a failed camera
degrades the result instead of stopping the station. A manifest with a `counter` graph also counts
the fibres on every usable tile of every frame (`FibreCounter`, as the frames arrive when the station
builds the input with `image_builder`) and gives the totals to the bimodal graph as `fibre_counts`.
A manifest with `tile_encoder` and `fusion` graphs (the bimodal graph cut after its image encoder) has the
station's builder encode the tiles that may be picked as their frame arrives, and `predict` then runs only
the fusion on the picked tiles' tokens: the same answers (the cut is checked), less work after the last frame.
A model trained with the room temperature gets the sensor's reading as `temperature` (`preprocess.room`).
When the manifest carries an `uncertainty` calibration (`isic-model calibrate-uncertainty`), `predict`
applies it (`uncertainty.py`): the calibrated standard uncertainty and 95 % interval per fibre, the
recalibrated confidence and the unknown-fibre check replace the raw tile spread and blend probability.
"""

import dataclasses
import logging
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from isic_station.inference.base import (
    GRAPH_BIMODAL,
    GRAPH_COUNTER,
    GRAPH_FUSION,
    GRAPH_SIGNAL_ONLY,
    GRAPH_TILE_ENCODER,
    Backend,
    Prediction,
)
from isic_station.inference.batches import static_batches
from isic_station.inference.counter import FibreCounter
from isic_station.inference.tile_encoder import OUTPUT_TILE_TOKENS, TileEncoder
from isic_station.manifest import Manifest
from isic_station.preprocess.image_stream import ImageBatchBuilder, StreamedImage
from isic_station.preprocess.room import temperature_input
from isic_station.preprocess.spectrum import preprocess_spectrum
from isic_station.uncertainty import PATH_BIMODAL, PATH_SIGNAL_ONLY, UncertaintyCalibration, spectrum_quality

# Tensor names fixed by the manifest contract (ARCHITECTURE.md, "Model manifest").
INPUT_SPECTRUM = "spectrum"
INPUT_IMAGE = "image"
INPUT_FIBRE_COUNTS = "fibre_counts"
INPUT_TEMPERATURE = "temperature"
OUTPUT_COMPOSITION = "composition"
OUTPUT_BLEND_LOGITS = "blend_logits"

log = logging.getLogger(__name__)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large logits cannot overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _milliseconds(start: float, end: float) -> float:
    return (end - start) * 1000.0


class Predictor:
    """Joins the manifest's preprocessing, a loaded backend and the fusion over tiles."""

    def __init__(self, manifest: Manifest, backend: Backend, calibrated: bool = True,
                 settings_problem: Optional[str] = None, measuring: Optional[Mapping[str, Any]] = None) -> None:
        """`calibrated=False` ignores the manifest's uncertainty calibration (raw answers, to calibrate on);
        `settings_problem` says why that calibration does not hold at the station's measuring settings
        (`uncertainty.settings_problem`: the station flags every result `uncalibrated_settings`);
        `measuring` are those settings (`uncertainty.station_settings_of`), which pick the calibration's
        confidence profile (`uncertainty.confidence_profile`; None: its own temperatures)."""
        self.manifest = manifest
        self.backend = backend
        self.calibration = UncertaintyCalibration.from_manifest(manifest, measuring) if calibrated else None
        self.settings_problem = settings_problem if self.calibration is not None else None
        self.counter = FibreCounter.on_backend(backend) if GRAPH_COUNTER in manifest.graphs else None
        split = GRAPH_TILE_ENCODER in manifest.graphs and GRAPH_FUSION in manifest.graphs
        self.encoder = TileEncoder.on_backend(backend) if split else None

    def image_builder(self, camera_um_per_px: float) -> ImageBatchBuilder:
        """A fresh builder of one measurement's image input (fibre counts, tile tokens) to feed frame by frame."""
        return ImageBatchBuilder(camera_um_per_px, self.manifest.image, self.counter, self.encoder)

    def predict(
        self,
        reflectance: np.ndarray,
        wavelengths_nm: np.ndarray,
        frames_bgr: Optional[Sequence[np.ndarray]],
        camera_um_per_px: float,
        streamed: Optional[StreamedImage] = None,
        flags: Iterable[str] = (),
        temperature_c: Optional[float] = None,
    ) -> Prediction:
        """The fused result for one measurement; no frames (None or empty) means signal-only.

        `streamed`, when given, is these frames' image input already built (`image_builder(...).built()`,
        while they arrived); built here from the frames when it is not given or was built for another model
        (then without the tile encoder: the bimodal graph reads the picked tiles). `flags` are the
        measurement's quality flags (they widen a calibrated interval). `temperature_c` is the room by the
        spectrometer's sensor (None: no reading; models without a temperature input ignore it). `timings_ms`
        holds `preprocess_ms` (spectrum and image preprocessing, counting included) and `infer_ms`.
        """
        start = time.perf_counter()
        spectrum = preprocess_spectrum(reflectance, wavelengths_nm, self.manifest.spectrum)
        image = None
        if frames_bgr is not None and len(frames_bgr) > 0:
            image = streamed if streamed is not None and streamed.params is self.manifest.image else None
            if image is None:
                builder = ImageBatchBuilder(camera_um_per_px, self.manifest.image, self.counter)
                for frame in frames_bgr:
                    builder.add(frame)
                image = builder.built()
            if image is not None and image.batch is None:
                log.warning("no image input: every tile of %d frame(s) touches a sample label or is mostly "
                            "dust/glare; measuring signal-only", len(frames_bgr))
        tiles = None if image is None else image.batch
        preprocessed = time.perf_counter()
        outputs = self.infer(spectrum, tiles, None if image is None else image.fibre_counts, temperature_c,
                             None if tiles is None else image.tile_tokens)
        done = time.perf_counter()
        timings = {"preprocess_ms": _milliseconds(start, preprocessed), "infer_ms": _milliseconds(preprocessed, done)}
        fused = self.fuse(outputs, signal_only=tiles is None, timings_ms=timings)
        if self.calibration is None:
            return fused
        c = self.calibration.apply(PATH_SIGNAL_ONLY if fused.signal_only else PATH_BIMODAL, fused.composition,
                                   fused.uncertainty, fused.blend_probabilities, spectrum,
                                   spectrum_quality(reflectance), flags)
        return dataclasses.replace(fused, uncertainty=c.uncertainty, interval_95=c.interval_95,
                                   decision_interval_95=c.decision_interval_95,
                                   confidence=c.confidence, blend_probabilities=c.blend_probabilities,
                                   unknown_fibre=c.unknown_fibre, unknown_fibre_score=c.unknown_fibre_score,
                                   uncalibrated_flags=c.uncalibrated_flags)

    def predict_preprocessed(self, spectrum: np.ndarray, tiles: Optional[np.ndarray],
                             fibre_counts: Optional[np.ndarray] = None,
                             temperature_c: Optional[float] = None) -> Prediction:
        """The fused result from already preprocessed inputs (evaluation builds them itself).

        `spectrum` is float32 [S] from `preprocess_spectrum`, `tiles` float32 [B, C, P, P] from
        `build_image_batch` or None for signal-only, `fibre_counts` [F] from the counter (models with
        one), `temperature_c` as for `predict`. `timings_ms` holds `infer_ms` only.
        """
        start = time.perf_counter()
        outputs = self.infer(spectrum, tiles, fibre_counts, temperature_c)
        timings = {"infer_ms": _milliseconds(start, time.perf_counter())}
        return self.fuse(outputs, signal_only=tiles is None, timings_ms=timings)

    def infer(self, spectrum: np.ndarray, tiles: Optional[np.ndarray],
              fibre_counts: Optional[np.ndarray] = None,
              temperature_c: Optional[float] = None,
              tile_tokens: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """The raw graph outputs for one measurement: bimodal with tiles, signal-only without; the fusion graph
        instead of the bimodal one when the tiles' `tile_tokens` [N, T, d] are given (the tile encoder's).

        A bimodal graph with a `fibre_counts` input needs the counts (ValueError without them). More tiles than
        the graph's static batch B (`image.tiles_per_measurement`; the manifest's `max_tiles` allows up to that
        many) run in batches of B (`static_batches`), the rows returned one per tile. A run's rows also see the
        mean over that run's tiles, so the best B tiles still run together, as with B tiles alone."""
        spectrum = np.asarray(spectrum, dtype=np.float32)
        if spectrum.ndim != 1:
            raise ValueError(f"spectrum must be one preprocessed vector [S], got shape {list(spectrum.shape)}")
        room = self.manifest.temperature_input
        if tiles is None:
            inputs = {INPUT_SPECTRUM: spectrum[None, :]}
            if room is not None:
                inputs[INPUT_TEMPERATURE] = temperature_input(temperature_c, room)[None, :]
            return self.backend.run(GRAPH_SIGNAL_ONLY, inputs)
        batch = int(self.manifest.image["tiles_per_measurement"])
        inputs = {INPUT_SPECTRUM: np.repeat(spectrum[None, :], batch, axis=0)}
        if room is not None:
            inputs[INPUT_TEMPERATURE] = np.repeat(temperature_input(temperature_c, room)[None, :], batch, axis=0)
        graph, rows, row_input = ((GRAPH_BIMODAL, tiles, INPUT_IMAGE) if tile_tokens is None
                                  else (GRAPH_FUSION, tile_tokens, OUTPUT_TILE_TOKENS))
        if any(spec.name == INPUT_FIBRE_COUNTS for spec in self.backend.graph(graph).inputs):
            if fibre_counts is None:
                raise ValueError(f"this model's {graph} graph takes fibre_counts: count the tiles with its counter")
            inputs[INPUT_FIBRE_COUNTS] = np.repeat(np.asarray(fibre_counts, dtype=np.float32)[None, :], batch, 0)
        answers: List[Dict[str, np.ndarray]] = []
        for chunk, real in static_batches(rows, batch):
            out = self.backend.run(graph, dict(inputs, **{row_input: chunk}))
            answers.append({name: value[:real] for name, value in out.items()})
        if len(answers) == 1:
            return answers[0]
        return {name: np.concatenate([a[name] for a in answers]) for name in answers[0]}

    def fuse(self, outputs: Mapping[str, np.ndarray], signal_only: bool,
             timings_ms: Optional[Dict[str, float]] = None) -> Prediction:
        """Average the per-tile rows: composition mean and std per fibre, blend from the mean softmax."""
        composition = np.asarray(outputs[OUTPUT_COMPOSITION], dtype=np.float64)
        blend = softmax(np.asarray(outputs[OUTPUT_BLEND_LOGITS], dtype=np.float64)).mean(axis=0)
        mean = composition.mean(axis=0)
        spread = np.zeros_like(mean) if signal_only else composition.std(axis=0)
        best = int(np.argmax(blend))
        fibres, classes = self.manifest.fibres, self.manifest.blend_classes
        return Prediction(
            composition={f: float(v) for f, v in zip(fibres, mean)},
            uncertainty={f: float(v) for f, v in zip(fibres, spread)},
            blend=classes[best],
            blend_probabilities={c: float(p) for c, p in zip(classes, blend)},
            confidence=float(blend[best]),
            signal_only=signal_only,
            backend=self.backend.name,
            timings_ms=dict(timings_ms or {}),
        )

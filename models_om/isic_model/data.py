"""Training and evaluation data from the virtual lab, preprocessed exactly as the station does.

Each measurement is simulated as the station would take it (`simulate_measurement`: co-added
spectrum with dark/white references, several microscope frames) with the station settings below,
then turned into model inputs by the station's own `preprocess_spectra` and `build_image_input`.
Spectra are kept before standardisation and tiles as uint8 (the image preprocessing with mean 0,
std 1 is pixel/255, exactly invertible), so the mean/std written to the manifest can be computed
from the training set afterwards without regenerating anything.

Training meets the plant's range of station settings (`Conditions`: camera scale, frame size, frames
and scans per measurement, a printed label in view), drawn per measurement; evaluation measures with
one `StationSettings`. With a fibre counter (an exported `counter` graph), every usable tile of every
frame is counted exactly as the station counts it (`ImageBatchBuilder` + `FibreCounter` on ONNX
Runtime) and the set holds the counts; `counter_tiles` gives the counter's own training tiles with the
lab's per-tile truth. Generation can run in worker processes, each on its own part of the seed.

Generated sets are cached as .npz files keyed by everything that shapes them (seed, count, preset,
overrides, station settings, conditions, preprocessing, fibre set, the counter graph's sha256, and the
lab's own source and data files).
"""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from isic_drivers.lab.microscope import CENTRELINE_STEP_PX
from isic_model.workers import save_npz, stop_workers_on_sigterm
from isic_station.preprocess.image import ImageParams, cut_frame
from isic_station.preprocess.image_stream import ImageBatchBuilder
from isic_station.preprocess.spectrum import preprocess_spectra

log = logging.getLogger(__name__)


# A lab preset name, or preset names with weights for a mixture of conditions.
Presets = Union[str, Mapping[str, float]]


def draw_preset(rng: np.random.Generator, preset: Presets) -> str:
    """`preset` itself, or one name of a mixture drawn with its weights."""
    if isinstance(preset, str):
        return preset
    names = sorted(preset)
    weights = np.array([float(preset[name]) for name in names])
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


@dataclass(frozen=True)
class StationSettings:
    """How the station measures (choices of the station, not of the fabric): co-adding, frames, scale.

    `frame_height` None: square frames; `label`: each frame shows the sample's printed QR label, as
    the virtual microscope draws it on the demo bench.
    """

    coadd: int = 16
    n_frames: int = 4
    frame_px: int = 256
    camera_um_per_px: float = 1.6
    integration_us: Optional[int] = None  # None: the instrument's default
    frame_height: Optional[int] = None
    label: bool = False

    @classmethod
    def of_station(cls, config: Any) -> "StationSettings":
        """The settings a station with this `isic_station.config.Config` measures with (label on)."""
        return cls(coadd=config.spectrometer.coadd, n_frames=config.camera.frames_per_measurement,
                   frame_px=config.camera.width, frame_height=config.camera.height,
                   camera_um_per_px=config.camera.um_per_px, integration_us=config.spectrometer.integration_us,
                   label=True)

    def measure(
        self,
        rng: np.random.Generator,
        preset: Presets,
        overrides: Optional[Mapping[str, float]],
        fibres: Sequence[str],
        with_frames: bool = True,
    ) -> Any:
        """Draw a sample from `preset` and measure it as the station does (a lab `Measurement`).

        `preset` is a lab preset name, or a mapping name -> weight: each sample then comes from one
        preset drawn with those weights (training over the range of conditions a station meets).
        """
        from isic_drivers.lab.sample import draw_sample

        sample = draw_sample(rng, draw_preset(rng, preset), dict(overrides or {}), fibres=list(fibres))
        return self.take(sample, rng, fibres, with_frames)

    def take(self, sample: Any, rng: np.random.Generator, fibres: Sequence[str], with_frames: bool = True) -> Any:
        """Measure this lab `Sample` as the station does (a lab `Measurement`; `fibres` the lab's fibre set)."""
        from isic_drivers.lab.measurement import simulate_measurement

        decorate = None
        if self.label:
            from isic_drivers.emulators.microscope import label_decorator

            decorate = label_decorator(f"L-{int(rng.integers(0, 10**6)):06d}")
        return simulate_measurement(
            sample,
            rng,
            integration_us=self.integration_us,
            coadd=self.coadd,
            n_frames=self.n_frames if with_frames else 0,
            frame_size=self.frame_px,
            um_per_px=self.camera_um_per_px,
            fibres=list(fibres),
            frame_height=self.frame_height,
            decorate=decorate,
        )


@dataclass(frozen=True)
class Conditions:
    """The plant's range of station settings, drawn per training measurement (the `[conditions]` table).

    `frame_sizes`: [width, height, weight, most frames] rows (big frames come with fewer frames, which
    keeps rendering affordable while the area seen spans what stations see); `frames` and `coadd` are
    [low, high] (frames drawn uniformly, scans from the two ends); `label_share` of the measurements
    show the printed label.
    """

    camera_um_per_px: Tuple[float, float] = (0.8, 1.6)
    frames: Tuple[int, int] = (3, 16)
    coadd: Tuple[int, int] = (4, 16)
    frame_sizes: Tuple[Tuple[float, ...], ...] = ((256, 256, 1.0, 16),)
    label_share: float = 0.0

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "Conditions":
        return cls(camera_um_per_px=tuple(table["camera_um_per_px"]), frames=tuple(table["frames"]),
                   coadd=tuple(table["coadd"]), frame_sizes=tuple(tuple(row) for row in table["frame_sizes"]),
                   label_share=float(table.get("label_share", 0.0)))

    def draw(self, rng: np.random.Generator, nominal: StationSettings) -> StationSettings:
        """One measurement's station settings."""
        weights = np.array([row[2] for row in self.frame_sizes], dtype=float)
        width, height, _weight, most = self.frame_sizes[int(rng.choice(len(weights), p=weights / weights.sum()))]
        high = min(self.frames[1], int(most))
        frames = int(rng.integers(min(self.frames[0], high), high + 1))
        return replace(nominal, camera_um_per_px=round(float(rng.uniform(*self.camera_um_per_px)), 3),
                       frame_px=int(width), frame_height=int(height), n_frames=frames,
                       coadd=int(self.coadd[int(rng.integers(0, 2))]), label=bool(rng.random() < self.label_share))

    def accepted(self) -> Dict[str, Any]:
        """What the manifest says the model accepts (`image.*_range`)."""
        sizes = [(int(row[0]), int(row[1])) for row in self.frame_sizes]
        return {
            "camera_um_per_px_range": [float(v) for v in self.camera_um_per_px],
            "frame_px_range": [list(min(sizes)), list(max(sizes))],
            "frames_per_measurement_range": [int(v) for v in self.frames],
            "coadd_range": [int(v) for v in self.coadd],
        }


@dataclass
class LabSet:
    """Measurements as model inputs.

    `features` float32 [N, S]: spectra after SNV/Savitzky-Golay, before standardisation;
    `reflectance` float32 [N, L] on `wavelengths_nm` (the station's R, for the baselines' own
    preprocessing); `tiles` uint8 [N, B, C, P, P]; `counts` float32 [N, F]: the fibre length per
    type the counter found on every usable tile of every frame (zeros without a counter);
    `composition` float32 [N, F]; `labels` int [N] indexes `blend_classes`; `temperature_c` float32 [N]:
    the room by the spectrometer's sensor.
    """

    features: np.ndarray
    reflectance: np.ndarray
    wavelengths_nm: np.ndarray
    tiles: np.ndarray
    counts: np.ndarray
    composition: np.ndarray
    labels: np.ndarray
    temperature_c: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def unstandardised(spectrum_params: Mapping[str, Any]) -> Dict[str, Any]:
    """Spectrum params with mean 0 / std 1: the features before the training set's standardisation."""
    n_points = len(spectrum_params["wavelengths_nm"])
    return dict(spectrum_params, mean=[0.0] * n_points, std=[1.0] * n_points)


def raw_image_params(image_params: Mapping[str, Any]) -> Dict[str, Any]:
    """Image params with mean 0 / std 1, so the batch is pixel/255 (stored as uint8)."""
    return dict(image_params, mean=0.0, std=1.0)


def tile_fibre_lengths(
    origins: Sequence[Tuple[int, int, int]], frame_fibres: Sequence[Sequence[Any]], scale: float, tile_px: int,
    fibres: Sequence[str],
) -> np.ndarray:
    """[B, F] centre-line length of each fibre type inside each tile, in tile sides.

    `origins[i]` = (frame, top, left) of tile i in the rescaled frame; `frame_fibres[k]` are the lab's
    drawn fibres of frame k (centre lines in camera pixels, points every `CENTRELINE_STEP_PX`);
    `scale` = camera µm/px / model µm/px maps them onto the rescaled frame. A tile no fibre crosses
    gets all zeros.
    """
    index = {name: j for j, name in enumerate(fibres)}
    lengths = np.zeros((len(origins), len(fibres)), dtype=np.float32)
    step = CENTRELINE_STEP_PX * scale / tile_px
    for row, (frame, top, left) in enumerate(origins):
        for fibre in frame_fibres[frame]:
            x, y = fibre.centreline_px[:, 0] * scale, fibre.centreline_px[:, 1] * scale
            inside = (x >= left) & (x < left + tile_px) & (y >= top) & (y < top + tile_px)
            lengths[row, index[fibre.name]] += float(np.count_nonzero(inside)) * step
    return lengths


def tile_fibre_shares(
    image_input: Any, frame_fibres: Sequence[Sequence[Any]], scale: float, tile_px: int, fibres: Sequence[str]
) -> np.ndarray:
    """[B, F] share of each fibre type in the centre-line length inside each tile of `image_input`
    (all zeros on a tile no fibre crosses)."""
    lengths = tile_fibre_lengths(image_input.origins, frame_fibres, scale, tile_px, fibres)
    total = lengths.sum(axis=1, keepdims=True)
    return np.divide(lengths, total, out=np.zeros_like(lengths), where=total > 0)


def _lab_fingerprint() -> str:
    """Hash of the lab's code and data, so a changed simulator never reuses a stale cache."""
    import isic_drivers.lab as lab

    digest = hashlib.sha256()
    for path in sorted(Path(lab.__file__).parent.glob("*")):
        if path.suffix in (".py", ".json"):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(**parts: Any) -> str:
    """A short stable hash of the generation parameters plus the lab's fingerprint."""
    text = json.dumps(parts, sort_keys=True, default=str) + _lab_fingerprint()
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def generate(
    seed: int,
    n: int,
    preset: Presets,
    overrides: Mapping[str, float],
    settings: StationSettings,
    spectrum_params: Mapping[str, Any],
    image_params: Mapping[str, Any],
    fibres: Sequence[str],
    blend_classes: Sequence[str],
    cache_dir: Optional[Path] = None,
    progress: bool = True,
    conditions: Optional[Conditions] = None,
    counter_onnx: Optional[Path] = None,
    parts: int = 1,
    jobs: int = 1,
) -> LabSet:
    """`n` measurements drawn with `seed` (deterministic), preprocessed and counted as the station does.

    `image_params` normalise the tiles the counter reads (its training set's mean/std); `tiles` are
    kept as uint8 pixels whatever they are.

    `conditions`: each measurement draws its own station settings (else all use `settings`);
    `counter_onnx`: the exported counter graph that fills `counts`; `parts` > 1 splits the draw into
    that many parts seeded (seed, part), generated `jobs` at a time in worker processes.
    A set holds the graph's batch of tiles per measurement (`tiles_per_measurement`, not the runtime's
    `max_tiles`): its arrays have one shape, and training draws its subsets of tiles from them.
    """
    image_params = {k: v for k, v in image_params.items() if k != "max_tiles"}
    key = cache_key(
        seed=seed,
        n=n,
        preset=preset,
        overrides=dict(overrides),
        settings=asdict(settings),
        conditions=asdict(conditions) if conditions else None,
        counter=_file_digest(counter_onnx),
        parts=parts,
        spectrum=unstandardised(spectrum_params),
        image=dict(image_params),
        fibres=list(fibres),
    )
    path = cache_dir / f"lab-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        log.info("lab set seed=%d n=%d from cache %s", seed, n, path)
        with np.load(path) as data:
            return LabSet(**{name: data[name] for name in data.files})
    task = dict(kind="measurements", preset=preset, overrides=dict(overrides), settings=settings,
                conditions=conditions, counter_onnx=counter_onnx, image_params=dict(image_params),
                fibres=list(fibres), blend_classes=list(blend_classes), progress=progress)
    chunks = _run_parts(task, seed, n, parts, jobs)
    reflectance = np.concatenate([c["reflectance"] for c in chunks])
    axis = chunks[0]["axis"]
    lab_set = LabSet(
        features=preprocess_spectra(reflectance, axis, unstandardised(spectrum_params)),
        reflectance=reflectance,
        wavelengths_nm=np.asarray(axis, dtype=np.float64),
        tiles=np.concatenate([c["tiles"] for c in chunks]),
        counts=np.concatenate([c["counts"] for c in chunks]),
        composition=np.concatenate([c["composition"] for c in chunks]),
        labels=np.concatenate([c["labels"] for c in chunks]),
        temperature_c=np.concatenate([c["temperature_c"] for c in chunks]),
    )
    if path is not None:
        save_npz(path, asdict(lab_set))
    return lab_set


def counter_tiles(
    seed: int,
    n: int,
    preset: Presets,
    settings: StationSettings,
    conditions: Optional[Conditions],
    image_params: Mapping[str, Any],
    fibres: Sequence[str],
    frames_per_sample: int = 2,
    parts: int = 1,
    jobs: int = 1,
    progress: bool = True,
    cache_dir: Optional[Path] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """The fibre counter's training set: every usable tile of `frames_per_sample` frames of `n` samples.

    Returns (tiles uint8 [M, C, P, P], lengths float32 [M, F]: the lab's fibre length per type in each
    tile, in tile sides, see `tile_fibre_lengths`).
    """
    image = raw_image_params(image_params)
    key = cache_key(kind="tiles", seed=seed, n=n, preset=preset, settings=asdict(settings),
                    conditions=asdict(conditions) if conditions else None, image=image, fibres=list(fibres),
                    frames=frames_per_sample, parts=parts)
    path = cache_dir / f"tiles-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        log.info("counter tiles seed=%d n=%d from cache %s", seed, n, path)
        with np.load(path) as data:
            return data["tiles"], data["lengths"]
    task = dict(kind="tiles", preset=preset, overrides={}, settings=settings, conditions=conditions,
                counter_onnx=None, image_params=image, fibres=list(fibres), blend_classes=[],
                frames_per_sample=frames_per_sample, progress=progress)
    chunks = _run_parts(task, seed, n, parts, jobs)
    tiles, lengths = np.concatenate([c["tiles"] for c in chunks]), np.concatenate([c["lengths"] for c in chunks])
    if path is not None:
        save_npz(path, {"tiles": tiles, "lengths": lengths})
    return tiles, lengths


def _file_digest(path: Optional[Path]) -> Optional[str]:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()[:20]


def _run_parts(task: Dict[str, Any], seed: int, n: int, parts: int, jobs: int) -> List[Dict[str, Any]]:
    """Each part's arrays, in part order (the same whatever `jobs` is)."""
    sizes = [n // parts + (1 if k < n % parts else 0) for k in range(parts)]
    tasks = [dict(task, seed=seed if parts == 1 else [seed, k], n=size, part=k) for k, size in enumerate(sizes)]
    if jobs <= 1 or parts <= 1:
        return [_generate_part(t) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Spawned (not forked) workers: the parent may have run torch's thread pool already.
    with ProcessPoolExecutor(min(jobs, parts), mp_context=multiprocessing.get_context("spawn"),
                             initializer=stop_workers_on_sigterm) as pool:
        return list(pool.map(_generate_part, tasks))


def _onnx_counter(path: Path) -> Any:
    """The station's `FibreCounter` on an ONNX Runtime session of the exported counter graph (1 thread)."""
    import onnxruntime as ort

    from isic_station.inference.counter import FibreCounter

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    n_fibres = session.get_outputs()[0].shape[1]
    return FibreCounter(lambda tiles: session.run(None, {"image": tiles})[0], int(shape[0]), int(n_fibres))


def _generate_part(task: Dict[str, Any]) -> Dict[str, Any]:
    """One part of a set (runs in a worker process or in this one)."""
    from tqdm import tqdm

    rng = np.random.default_rng(task["seed"])
    fibres, settings, conditions = task["fibres"], task["settings"], task["conditions"]
    img = task["image_params"]   # the builder normalises as the manifest will say: the counter reads that
    spec = ImageParams.from_manifest(img)

    def as_uint8(batch: np.ndarray) -> np.ndarray:
        return np.rint((batch * spec.std + spec.mean) * 255.0).astype(np.uint8)

    tile_px = int(img["tile_px"])
    counter = _onnx_counter(task["counter_onnx"]) if task.get("counter_onnx") else None
    class_index = {label: i for i, label in enumerate(task["blend_classes"])}
    out: Dict[str, List[Any]] = {"reflectance": [], "tiles": [], "counts": [], "composition": [], "labels": [],
                                 "lengths": [], "temperature_c": []}
    axis = None
    bar = tqdm(total=task["n"], desc=f"lab seed {task['seed']}", unit="meas", disable=not task["progress"],
               leave=False, position=int(task["part"]))
    done = 0
    while done < task["n"]:
        s = conditions.draw(rng, settings) if conditions is not None else settings
        if task["kind"] == "tiles":
            s = replace(s, n_frames=min(s.n_frames, int(task["frames_per_sample"])))
        m = s.measure(rng, task["preset"], task["overrides"], fibres)
        scale = s.camera_um_per_px / spec.um_per_px
        if task["kind"] == "tiles":
            for k, frame in enumerate(m.frames):
                cut = cut_frame(frame, s.camera_um_per_px, spec)
                rows = np.flatnonzero(cut.usable)
                out["tiles"].append(as_uint8(cut.normalised(rows, spec)))
                origins = [(k,) + cut.origins[i] for i in rows]
                out["lengths"].append(tile_fibre_lengths(origins, m.truth.frame_fibres, scale, tile_px, fibres))
        else:
            builder = ImageBatchBuilder(s.camera_um_per_px, img, counter)
            for frame in m.frames:
                builder.add(frame)
            batch = builder.batch()
            if batch is None:   # every tile masked (a label over the whole of tiny frames): draw again
                continue
            axis = m.wavelengths_nm
            out["reflectance"].append(m.reflectance.astype(np.float32))
            out["tiles"].append(as_uint8(batch))
            counts = builder.fibre_counts()
            out["counts"].append(np.zeros(len(fibres), np.float32) if counts is None else counts)
            out["composition"].append(m.truth.composition.astype(np.float32))
            out["labels"].append(class_index[m.truth.blend])
            out["temperature_c"].append(m.temperature_c)
        done += 1
        bar.update(1)
    bar.close()
    if task["kind"] == "tiles":
        return {"tiles": np.concatenate(out["tiles"]), "lengths": np.concatenate(out["lengths"])}
    return {"axis": np.asarray(axis, dtype=np.float64), "reflectance": np.stack(out["reflectance"]),
            "tiles": np.stack(out["tiles"]), "counts": np.stack(out["counts"]).astype(np.float32),
            "composition": np.stack(out["composition"]), "labels": np.asarray(out["labels"], dtype=np.int64),
            "temperature_c": np.asarray(out["temperature_c"], dtype=np.float32)}


def generate_spectra(
    seed: int, n: int, preset: Presets, settings: StationSettings, fibres: Sequence[str], blend_classes: Sequence[str]
) -> LabSet:
    """`n` spectrum-only measurements (no frames; `tiles` is empty): what the chemometric baselines fit on."""
    rng = np.random.default_rng(seed)
    class_index = {label: i for i, label in enumerate(blend_classes)}
    reflectances, compositions, labels, rooms = [], [], [], []
    axis = None
    for _ in range(n):
        m = settings.measure(rng, preset, None, fibres, with_frames=False)
        axis = m.wavelengths_nm
        reflectances.append(m.reflectance.astype(np.float32))
        compositions.append(m.truth.composition.astype(np.float32))
        labels.append(class_index[m.truth.blend])
        rooms.append(m.temperature_c)
    return LabSet(
        features=np.zeros((n, 0), np.float32),
        reflectance=np.stack(reflectances),
        wavelengths_nm=np.asarray(axis, dtype=np.float64),
        tiles=np.zeros((n, 0), np.uint8),
        counts=np.zeros((n, 0), np.float32),
        composition=np.stack(compositions),
        labels=np.asarray(labels, dtype=np.int64),
        temperature_c=np.asarray(rooms, dtype=np.float32),
    )

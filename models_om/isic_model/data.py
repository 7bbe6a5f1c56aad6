"""Training and evaluation data from the virtual lab, preprocessed exactly as the station does.

Each measurement is simulated as the station would take it (`simulate_measurement`: co-added
spectrum with dark/white references, several microscope frames) with the station settings below,
then turned into model inputs by the station's own `preprocess_spectra` and `build_image_input`.
Spectra are kept before standardisation and tiles as uint8 (the image preprocessing with mean 0,
std 1 is pixel/255, exactly invertible), so the mean/std written to the manifest can be computed
from the training set afterwards without regenerating anything.

Generated sets are cached as .npz files keyed by everything that shapes them (seed, count, preset,
overrides, station settings, preprocessing, fibre set, and the lab's own source and data files).
"""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

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


@dataclass
class LabSet:
    """Measurements as model inputs.

    `features` float32 [N, S]: spectra after SNV/Savitzky-Golay, before standardisation;
    `reflectance` float32 [N, L] on `wavelengths_nm` (the station's R, for the baselines' own
    preprocessing); `tiles` uint8 [N, B, C, P, P]; `tile_fibres` float32 [N, B, F]: the share of
    each fibre type in the fibre length crossing each tile (all zero on a tile without fibre);
    `composition` float32 [N, F]; `labels` int [N] indexes `blend_classes`.
    """

    features: np.ndarray
    reflectance: np.ndarray
    wavelengths_nm: np.ndarray
    tiles: np.ndarray
    tile_fibres: np.ndarray
    composition: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def unstandardised(spectrum_params: Mapping[str, Any]) -> Dict[str, Any]:
    """Spectrum params with mean 0 / std 1: the features before the training set's standardisation."""
    n_points = len(spectrum_params["wavelengths_nm"])
    return dict(spectrum_params, mean=[0.0] * n_points, std=[1.0] * n_points)


def raw_image_params(image_params: Mapping[str, Any]) -> Dict[str, Any]:
    """Image params with mean 0 / std 1, so the batch is pixel/255 (stored as uint8)."""
    return dict(image_params, mean=0.0, std=1.0)


def tile_fibre_shares(
    image_input: Any, frame_fibres: Sequence[Sequence[Any]], scale: float, tile_px: int, fibres: Sequence[str]
) -> np.ndarray:
    """[B, F] share of each fibre type in the centre-line length inside each tile of `image_input`.

    `frame_fibres[k]` are the lab's drawn fibres of frame k (centre lines in camera pixels, evenly
    spaced points); `scale` = camera µm/px / model µm/px maps them onto the rescaled frame the
    tiles were cut from. A tile no fibre crosses gets all zeros.
    """
    index = {name: j for j, name in enumerate(fibres)}
    shares = np.zeros((len(image_input.origins), len(fibres)), dtype=np.float32)
    for row, (frame, top, left) in enumerate(image_input.origins):
        for fibre in frame_fibres[frame]:
            x, y = fibre.centreline_px[:, 0] * scale, fibre.centreline_px[:, 1] * scale
            inside = (x >= left) & (x < left + tile_px) & (y >= top) & (y < top + tile_px)
            shares[row, index[fibre.name]] += float(np.count_nonzero(inside))
    total = shares.sum(axis=1, keepdims=True)
    return np.divide(shares, total, out=np.zeros_like(shares), where=total > 0)


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
) -> LabSet:
    """`n` measurements drawn with `seed` (deterministic), preprocessed as the station does."""
    key = cache_key(
        seed=seed,
        n=n,
        preset=preset,
        overrides=dict(overrides),
        settings=asdict(settings),
        spectrum=unstandardised(spectrum_params),
        image=raw_image_params(image_params),
        fibres=list(fibres),
    )
    path = cache_dir / f"lab-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        log.info("lab set seed=%d n=%d from cache %s", seed, n, path)
        with np.load(path) as data:
            return LabSet(**{name: data[name] for name in data.files})
    from tqdm import tqdm

    from isic_station.preprocess.image import build_image_input
    from isic_station.preprocess.spectrum import preprocess_spectra

    rng = np.random.default_rng(seed)
    class_index = {label: i for i, label in enumerate(blend_classes)}
    img = raw_image_params(image_params)
    reflectances: List[np.ndarray] = []
    tiles: List[np.ndarray] = []
    tile_fibres: List[np.ndarray] = []
    compositions: List[np.ndarray] = []
    labels: List[int] = []
    axis = None
    for _ in tqdm(range(n), desc=f"lab seed {seed}", unit="meas", disable=not progress, leave=False):
        m = settings.measure(rng, preset, overrides, fibres)
        axis = m.wavelengths_nm
        reflectances.append(m.reflectance.astype(np.float32))
        image_input = build_image_input(m.frames, settings.camera_um_per_px, img)
        tiles.append(np.rint(image_input.batch * 255.0).astype(np.uint8))
        scale = settings.camera_um_per_px / float(image_params["um_per_px"])
        tile_fibres.append(
            tile_fibre_shares(image_input, m.truth.frame_fibres, scale, int(image_params["tile_px"]), fibres)
        )
        compositions.append(m.truth.composition.astype(np.float32))
        labels.append(class_index[m.truth.blend])
    reflectance = np.stack(reflectances)
    lab_set = LabSet(
        features=preprocess_spectra(reflectance, axis, unstandardised(spectrum_params)),
        reflectance=reflectance,
        wavelengths_nm=np.asarray(axis, dtype=np.float64),
        tiles=np.stack(tiles),
        tile_fibres=np.stack(tile_fibres),
        composition=np.stack(compositions),
        labels=np.asarray(labels, dtype=np.int64),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **asdict(lab_set))
        tmp.replace(path)
    return lab_set


def generate_spectra(
    seed: int, n: int, preset: Presets, settings: StationSettings, fibres: Sequence[str], blend_classes: Sequence[str]
) -> LabSet:
    """`n` spectrum-only measurements (no frames; `tiles` is empty): what the chemometric baselines fit on."""
    rng = np.random.default_rng(seed)
    class_index = {label: i for i, label in enumerate(blend_classes)}
    reflectances, compositions, labels = [], [], []
    axis = None
    for _ in range(n):
        m = settings.measure(rng, preset, None, fibres, with_frames=False)
        axis = m.wavelengths_nm
        reflectances.append(m.reflectance.astype(np.float32))
        compositions.append(m.truth.composition.astype(np.float32))
        labels.append(class_index[m.truth.blend])
    return LabSet(
        features=np.zeros((n, 0), np.float32),
        reflectance=np.stack(reflectances),
        wavelengths_nm=np.asarray(axis, dtype=np.float64),
        tiles=np.zeros((n, 0), np.uint8),
        tile_fibres=np.zeros((n, 0), np.float32),
        composition=np.stack(compositions),
        labels=np.asarray(labels, dtype=np.int64),
    )

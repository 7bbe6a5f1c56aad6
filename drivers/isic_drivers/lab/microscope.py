"""The virtual microscope: bright-field frames of a fabric's fibres, lengthwise view.

Each fibre is an optical-density layer drawn with OpenCV primitives along a gently curving centre
line: the body, then the structures of its type as listed in its `morphology` entry in
`fibres.json` (twisted ribbon with convolutions, lumen, nodes and cross-marks, striations, scales,
medulla, groove, trilobal shadows, delustrant specks), then its refractive edges. Layers add up
(overlapping fibres are darker), the light passes through as exp(-OD) under uneven illumination,
then optics blur (focus), dust, and camera noise are applied.

How many fibres of each type a frame holds follows the mass fractions weighted by
1 / (density * diameter^2), the relation the microscope counting method uses to turn counts into
mass percentages. The morphology features are chosen by the keys present in a fibre's entry, so a
new fibre type composes the existing features without code.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import cv2
import numpy as np

from isic_drivers.lab.fibres import Fibre, FibreSet, load_fibres
from isic_drivers.lab.sample import Nuisance, Sample
from isic_drivers.lab.stage import ReferenceTile

# Fixed-point bits for sub-pixel drawing with cv2 (coordinates are multiplied by 2**_SHIFT).
_SHIFT = 3
_SCALE = float(1 << _SHIFT)
# Optical point-spread of the in-focus objective (sigma, micrometres) and the lamp level.
_PSF_UM = 0.35
_LAMP_LEVEL = 0.92
_LAMP_TINT_BGR = (0.93, 0.98, 1.0)
_DYE_OD = 1.2
_DARK_TILE_LEVEL = 0.02
CENTRELINE_STEP_PX = 2.0

FrameDecorator = Callable[[np.ndarray], None]


@dataclass
class DrawnFibre:
    """One fibre drawn in a frame: its type, diameter, and centre line in pixels (N x 2, x/y)."""

    name: str
    diameter_um: float
    centreline_px: np.ndarray


@dataclass
class FrameTruth:
    """What a frame really shows: the count per fibre type and each drawn fibre."""

    counts: Dict[str, int]
    fibres: List[DrawnFibre] = field(default_factory=list)
    defocus_um: float = 0.0


def count_weights(composition: Mapping[str, float], fibres: FibreSet) -> Dict[str, float]:
    """Expected share of fibres of each type in view: mass fraction / (density * mean d^2), normalised."""
    raw = {n: frac / (fibres[n].density_g_cm3 * fibres[n].mean_square_diameter_um2)
           for n, frac in composition.items() if frac > 0}
    total = sum(raw.values())
    return {n: v / total for n, v in raw.items()}


def draw_fibres_in_view(sample: Sample, rng: np.random.Generator, width: int, height: int, um_per_px: float,
                        fibres: FibreSet) -> Tuple[List[str], np.ndarray]:
    """Which fibres cross one frame: (the sample's fibre names, one index into them per fibre in view).

    The count is Poisson in the fibres per mm across the frame's longer side; each fibre's type is
    drawn with `count_weights`. Split out of `render_frame` so the counting limit
    (`isic-model counting-limit`) draws exactly what the renderer draws, without rendering.
    """
    weights = count_weights(sample.composition, fibres) if sample.composition else {}
    names = list(weights)
    frame_mm = max(width, height) * um_per_px / 1000.0
    n = int(rng.poisson(sample.nuisance.fibre_density_per_mm * frame_mm)) if names else 0
    kinds = rng.choice(len(names), size=n, p=[weights[k] for k in names]) if names else np.zeros(0, dtype=int)
    return names, kinds


def _dye_od_bgr(sample: Sample) -> np.ndarray:
    """Per-channel optical density of the dye at full uptake (a hue absorbs its complement)."""
    nu = sample.nuisance
    if nu.dye_darkness <= 0:
        return np.zeros(3, dtype=np.float32)
    hsv = np.array([[[int(nu.dye_hue_deg % 360) // 2, 210, 255]]], dtype=np.uint8)
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32) / 255.0
    organic = (1.0 - nu.dye_carbon) * (1.0 - colour) + nu.dye_carbon
    return (_DYE_OD * nu.dye_darkness * organic).astype(np.float32)


def _colour_od(fibre: Fibre, dye: np.ndarray) -> np.ndarray:
    """OD per channel per unit of the fibre's drawn density: its natural tint plus the dye it takes up."""
    tint = np.asarray(fibre.morphology.get("tint", (1.0, 1.0, 1.0)), dtype=np.float32)
    return tint + dye * np.float32(fibre.dye_uptake / fibre.morphology["body_od"])


def _smooth_noise(rng: np.random.Generator, n: int, knot_every: float) -> np.ndarray:
    """A smooth random profile of length n (unit sd at the knots), linearly interpolated."""
    knots = max(2, int(n / max(knot_every, 1.0)) + 2)
    values = rng.standard_normal(knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values)


def _centreline(rng: np.random.Generator, width: int, height: int, curl_rad_per_px: float, margin_px: float
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (N x 2), tangent angles and arc length of a fibre crossing a random point of the frame.

    Only the run through the frame (plus `margin_px`, so the fibre's ends stay out of view) is kept.
    """
    half = float(np.hypot(width, height)) * 0.75
    s = np.arange(-half, half + CENTRELINE_STEP_PX, CENTRELINE_STEP_PX)
    mid = len(s) // 2
    curvature = curl_rad_per_px * (rng.standard_normal() + 0.5 * _smooth_noise(rng, len(s), len(s) / 3))
    theta = np.cumsum(curvature) * CENTRELINE_STEP_PX
    theta += rng.uniform(0.0, np.pi) - theta[mid]
    steps = np.stack([np.cos(theta), np.sin(theta)], axis=1) * CENTRELINE_STEP_PX
    points = np.cumsum(steps, axis=0)
    points += np.array([rng.uniform(0, width), rng.uniform(0, height)]) - points[mid]
    x, y = points[:, 0], points[:, 1]
    outside = np.flatnonzero((x < -margin_px) | (x > width + margin_px) | (y < -margin_px) | (y > height + margin_px))
    before, after = outside[outside < mid], outside[outside > mid]
    lo = int(before[-1]) if before.size else 0
    hi = int(after[0]) + 1 if after.size else len(s)
    return points[lo:hi], theta[lo:hi], s[lo:hi]


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.rint(points * _SCALE).astype(np.int32)


def _stroke(width_um: float, um_per_px: float) -> Tuple[int, float]:
    """(OpenCV thickness, factor on the optical density) that draw a mark `width_um` wide at this camera scale.

    A mark narrower than the optics resolve images `_RESOLUTION_UM` wide, and one narrower than a pixel
    covers part of it: both are drawn one pixel wide (OpenCV's thinnest line) with the density scaled by
    the pixels they cover, so that such a mark takes about the same light at every camera scale (a node's
    line on a fibre, resampled to the model's scale: tests/lab/test_microscope.py). Wider marks keep the
    nearest whole-pixel thickness.
    """
    px = max(width_um, _RESOLUTION_UM) / um_per_px
    if width_um < _RESOLUTION_UM or px < 1.0:
        return 1, px
    return int(round(px)), 1.0


def _polyline(layer: np.ndarray, points: np.ndarray, value: float, width_um: float, um_per_px: float) -> None:
    """A mark `width_um` wide along `points` (see `_stroke`)."""
    whole, factor = _stroke(width_um, um_per_px)
    cv2.polylines(layer, [_fixed(points)], False, float(value) * factor, whole, cv2.LINE_8, _SHIFT)


def _segments(mask: np.ndarray) -> List[Tuple[int, int]]:
    """Start/stop index pairs of the runs where `mask` is true."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _positions(rng: np.random.Generator, s: np.ndarray, spacing_px: float) -> np.ndarray:
    """Indices along the centre line at roughly even, jittered spacing."""
    if spacing_px <= 0:
        return np.array([], dtype=int)
    marks = np.arange(s[0] + rng.uniform(0, spacing_px), s[-1], spacing_px)
    marks += rng.uniform(-0.3, 0.3, len(marks)) * spacing_px
    return np.clip(np.searchsorted(s, marks), 0, len(s) - 1)


@dataclass
class _Fibre:
    """Geometry of one fibre being drawn: centre line, normals, half widths along it, and marks."""

    points: np.ndarray       # N x 2 centre line (px)
    normal: np.ndarray       # N x 2 unit normals
    half_w: np.ndarray       # N half widths (px)
    s: np.ndarray            # N arc lengths (px)
    width_px: float          # nominal diameter (px)
    diameter_um: float
    flat: np.ndarray         # N: 1 where a ribbon lies flat, 0 where it is edge-on (twisted fibres)
    twists: np.ndarray       # indices of ribbon reversals (cotton convolutions)
    nodes: np.ndarray        # indices of nodes (linen)

    def offset(self, fraction: float) -> np.ndarray:
        """The line at `fraction` of the half width off the centre (-1 and 1 are the edges)."""
        return self.points + self.normal * (fraction * self.half_w)[:, None]

    def across(self, i: int, skew_px: float) -> np.ndarray:
        """A line across the fibre at index i, edge to edge, skewed along the fibre by `skew_px`."""
        tangent = np.array([self.normal[i, 1], -self.normal[i, 0]])
        a = self.points[i] + self.normal[i] * self.half_w[i] - tangent * skew_px
        b = self.points[i] - self.normal[i] * self.half_w[i] + tangent * skew_px
        return np.stack([a, b])


# Widths of drawn lines as fractions of the fibre width.
_EDGE_WIDTH = 0.08
_GROOVE_WIDTH = 0.12
_MEDULLA_WIDTH = 0.25
# The finest mark the objective images (um): a node's cross-line, a striation, a scale edge or a speck is
# narrower and images this wide, whatever the camera's pixel (`_stroke`). Until this was physical, marks
# were one camera pixel wide: 1.0 um at 1.0 um/px, 1.6 um at 1.6 um/px, so a finer camera saw them fainter
# once resampled to the model's scale, and linen's nodes faded towards cotton. 1.6 um leaves the frames
# of a 1.6 um/px camera (the shipped v4's training scale) exactly as they were.
_RESOLUTION_UM = 1.6


def _geometry(fibre: Fibre, rng: np.random.Generator, width: int, height: int, um_per_px: float) -> _Fibre:
    """Centre line and width profile: roughness, a twisting ribbon (cotton), swollen nodes (linen)."""
    m = fibre.morphology
    diameter = float(rng.uniform(*fibre.diameter_um))
    w = diameter / um_per_px
    curl = float(m.get("curl", 0.5)) * um_per_px / 1000.0
    points, theta, s = _centreline(rng, width, height, curl, margin_px=w + 4.0)
    normal = np.stack([-np.sin(theta), np.cos(theta)], axis=1)
    half_w = 0.5 * w * (1.0 + float(m.get("edge_roughness", 0.0)) * _smooth_noise(rng, len(s), 8.0 / um_per_px))
    flat = np.ones_like(s)
    twists = nodes = np.array([], dtype=int)
    if "twist_per_mm" in m:  # a flat ribbon twisting back and forth: narrow where edge-on
        period_px = 1000.0 / rng.uniform(*m["twist_per_mm"]) / um_per_px
        phase = np.cos(np.pi * s / period_px + rng.uniform(0, np.pi))
        lo = float(m["twist_min_width"])
        half_w = half_w * (lo + (1.0 - lo) * np.abs(phase))
        flat = np.abs(phase)
        twists = np.flatnonzero(np.diff(np.sign(phase)) != 0)
    if "nodes_per_mm" in m:  # bamboo-like nodes, slightly swollen
        nodes = _positions(rng, s, 1000.0 / rng.uniform(*m["nodes_per_mm"]) / um_per_px)
        bulge = np.zeros_like(s)
        for i in nodes:
            bulge += np.exp(-(((s - s[i]) / w) ** 2))
        half_w = half_w * (1.0 + float(m["node_bulge"]) * bulge)
    return _Fibre(points, normal, half_w, s, w, diameter, flat, twists, nodes)


def _lumen(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator, um_per_px: float) -> None:
    """The central canal, visible where a ribbon lies flat."""
    for a, b in _segments(f.flat > 0.6):
        if b - a > 2:
            _polyline(layer, f.points[a:b], m["lumen_od"], m["lumen_width"] * f.diameter_um, um_per_px)


def _striations(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator,
                um_per_px: float) -> None:
    """Fine lengthwise lines (viscose, elastane)."""
    k = int(rng.integers(m["striations"][0], m["striations"][1] + 1))
    for off in np.linspace(-0.6, 0.6, k) + rng.uniform(-0.08, 0.08, k):
        _polyline(layer, f.offset(off), m["striation_od"], 0.0, um_per_px)


def _groove(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator, um_per_px: float) -> None:
    """One lengthwise groove off the centre (acrylic)."""
    _polyline(layer, f.offset(rng.uniform(-0.3, 0.3)), m["groove_od"], _GROOVE_WIDTH * f.diameter_um, um_per_px)


def _trilobal(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator,
              um_per_px: float) -> None:
    """Lobe shadows of a trilobal filament, for a share `trilobal_p` of the fibres."""
    if rng.random() < float(m["trilobal_p"]):
        for off in (-0.35, 0.35):
            _polyline(layer, f.offset(off), 0.5 * m["edge_od"], _EDGE_WIDTH * f.diameter_um, um_per_px)


def _medulla(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator, um_per_px: float) -> None:
    """A broken central medulla, in a share `medulla_p` of the fibres (coarse wool)."""
    if rng.random() < float(m["medulla_p"]):
        for a, b in _segments(_smooth_noise(rng, len(f.s), 30.0 / um_per_px) > -0.5):
            if b - a > 2:
                _polyline(layer, f.points[a:b], m["medulla_od"], _MEDULLA_WIDTH * f.diameter_um, um_per_px)


def _scales(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator, um_per_px: float) -> None:
    """Overlapping cuticle scales: irregular bent lines across the fibre (wool)."""
    for i in _positions(rng, f.s, rng.uniform(*m["scale_spacing_um"]) / um_per_px):
        tangent = np.array([f.normal[i, 1], -f.normal[i, 0]])
        mid = f.points[i] + tangent * rng.uniform(-0.25, 0.35) * f.width_px
        line = np.stack([f.points[i] + f.normal[i] * f.half_w[i], mid, f.points[i] - f.normal[i] * f.half_w[i]])
        _polyline(layer, line, m["scale_od"], 0.0, um_per_px)


def _convolutions(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator,
                  um_per_px: float) -> None:
    """Where the ribbon reverses, its edges cross the fibre diagonally (cotton)."""
    for i in f.twists:
        _polyline(layer, f.across(i, 0.5 * f.width_px), m["convolution_od"], _EDGE_WIDTH * f.diameter_um, um_per_px)


def _node_marks(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator,
                um_per_px: float) -> None:
    """A dark line across each node with cross-marks (an X) on it (linen)."""
    for i in f.nodes:
        _polyline(layer, f.across(i, rng.uniform(-0.15, 0.15) * f.width_px), m["node_od"], 0.0, um_per_px)
        for skew in (-0.35, 0.35):
            _polyline(layer, f.across(i, skew * f.width_px * rng.uniform(0.7, 1.3)), 0.7 * m["node_od"], 0.0,
                      um_per_px)


def _specks(layer: np.ndarray, f: _Fibre, m: Mapping[str, Any], rng: np.random.Generator, um_per_px: float) -> None:
    """Sub-micrometre dark dots: delustrant (TiO2) or a grainy surface."""
    height, width = layer.shape
    length_um = float(f.s[-1] - f.s[0]) * um_per_px
    n = rng.poisson(rng.uniform(*m["specks_per_100um2"]) * length_um * f.diameter_um / 100.0)
    idx = rng.integers(0, len(f.s), n)
    pts = f.points[idx] + f.normal[idx] * (rng.uniform(-0.8, 0.8, n) * f.half_w[idx])[:, None]
    x, y = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
    px = _RESOLUTION_UM / um_per_px  # a dot images as wide as the optics resolve, in both directions
    whole = max(1, int(round(px)))
    value = float(m.get("speck_od", 0.9)) * (px / whole) ** 2
    for dy in range(whole):
        for dx in range(whole):
            inside = (x + dx >= 0) & (x + dx < width) & (y + dy >= 0) & (y + dy < height)
            layer[y[inside] + dy, x[inside] + dx] = value


# Morphology features, drawn in this order when the fibre's `morphology` has the key.
_FEATURES = (
    ("lumen_od", _lumen),
    ("striations", _striations),
    ("groove_od", _groove),
    ("trilobal_p", _trilobal),
    ("medulla_p", _medulla),
    ("scale_spacing_um", _scales),
    ("twist_per_mm", _convolutions),
    ("nodes_per_mm", _node_marks),
    ("specks_per_100um2", _specks),
)


def _draw_fibre(layer: np.ndarray, fibre: Fibre, rng: np.random.Generator, um_per_px: float) -> DrawnFibre:
    """Draw one fibre's optical density into `layer`: body, its type's features, refractive edges.

    Values are set, not added, within the fibre; fibres add up across layers.
    """
    m = fibre.morphology
    height, width = layer.shape
    f = _geometry(fibre, rng, width, height, um_per_px)
    left, right = f.offset(1.0), f.offset(-1.0)
    cv2.fillPoly(layer, [_fixed(np.concatenate([left, right[::-1]]))], float(m["body_od"]), cv2.LINE_8, _SHIFT)
    for key, draw in _FEATURES:
        if key in m:
            draw(layer, f, m, rng, um_per_px)
    _polyline(layer, left, m["edge_od"], _EDGE_WIDTH * f.diameter_um, um_per_px)
    _polyline(layer, right, m["edge_od"], _EDGE_WIDTH * f.diameter_um, um_per_px)
    return DrawnFibre(fibre.name, f.diameter_um, f.points.astype(np.float32))


def _illumination(rng: np.random.Generator, width: int, height: int, unevenness: float) -> np.ndarray:
    """Lamp field: vignetting around an off-centre hot spot plus a linear gradient, tinted."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / np.float32(width * width + height * height)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.float32(np.cos(angle) / width) * x + np.float32(np.sin(angle) / height) * y - 0.5) * 0.5
    field_ = np.float32(_LAMP_LEVEL) * (1.0 - np.float32(unevenness) * (2.0 * r2 + gradient))
    return cv2.merge([field_ * np.float32(t) for t in _LAMP_TINT_BGR])


def _dust(od: np.ndarray, rng: np.random.Generator, mean_count: float, um_per_px: float) -> None:
    """Dust and debris on the slide: dark round specks and short fibrils."""
    height, width = od.shape[:2]
    for _ in range(rng.poisson(mean_count)):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        grey = float(rng.uniform(0.3, 1.5))
        if rng.random() < 0.7:
            radius = max(1, int(rng.uniform(0.5, 4.0) / um_per_px))
            cv2.circle(od, centre, radius, (grey, grey, grey), -1)
        else:
            angle = rng.uniform(0, np.pi)
            length = rng.uniform(5.0, 25.0) / um_per_px
            end = (int(centre[0] + length * np.cos(angle)), int(centre[1] + length * np.sin(angle)))
            cv2.line(od, centre, end, (grey, grey, grey), 1)


def render_frame(sample: Union[Sample, ReferenceTile], rng: np.random.Generator, width: int = 256, height: int = 256,
                 um_per_px: float = 0.8, fibres: Optional[FibreSet] = None, sharp: bool = False,
                 defocus_um: Optional[float] = None,
                 decorate: Optional[FrameDecorator] = None) -> Tuple[np.ndarray, FrameTruth]:
    """One bright-field frame of the sample (BGR uint8, height x width) and what it really shows.

    `sharp=True` renders in perfect focus; `defocus_um` forces a blur (sigma in micrometres),
    otherwise each frame draws its own around `sample.nuisance.defocus_um`. `decorate(image)` may
    draw on the float BGR transmission image (0..1) before optics and camera act, e.g. a printed
    label on the sample. A reference tile under the microscope gives an empty field: bright for
    the white tile, nearly black for the dark one.
    """
    fibres = fibres if fibres is not None else load_fibres()
    tile = sample if isinstance(sample, ReferenceTile) else None
    if tile is not None:
        sample = Sample({}, Nuisance())
    nu = sample.nuisance
    names, kinds = draw_fibres_in_view(sample, rng, width, height, um_per_px, fibres)
    # Fibres of one type share a colour: sum their layers per type, then colour each sum once.
    per_type = {k: np.zeros((height, width), dtype=np.float32) for k in set(kinds.tolist())}
    layer = np.empty((height, width), dtype=np.float32)
    drawn = []
    for k in kinds:
        layer.fill(0.0)
        drawn.append(_draw_fibre(layer, fibres[names[k]], rng, um_per_px))
        cv2.add(per_type[k], layer, dst=per_type[k])
    # OD per channel = per-type sums through a colour matrix: the fibre's tint plus its dye, whose
    # optical density, like the body's, grows with the path through the fibre.
    dye = _dye_od_bgr(sample)
    od = np.zeros((height, width, 3), dtype=np.float32)
    types = sorted(per_type)
    for start in range(0, len(types), 4):  # cv2.transform mixes at most 4 input channels
        chunk = types[start:start + 4]
        matrix = np.stack([_colour_od(fibres[names[k]], dye) for k in chunk], axis=1)
        od += cv2.transform(cv2.merge([per_type[k] for k in chunk]), matrix)
    _dust(od, rng, nu.dust_per_frame, um_per_px)
    image = _illumination(rng, width, height, nu.illumination_unevenness) * cv2.exp(-od)
    if tile is not None and tile.kind == "dark":
        image *= np.float32(_DARK_TILE_LEVEL)
    if decorate is not None:
        decorate(image)
    if sharp:
        blur_um = 0.0
    elif defocus_um is not None:
        blur_um = float(defocus_um)
    else:
        blur_um = float(nu.defocus_um * rng.uniform(0.5, 1.5))
    sigma_px = float(np.hypot(_PSF_UM, blur_um)) / um_per_px
    image = cv2.GaussianBlur(image, (0, 0), sigma_px)
    # Camera noise from OpenCV's generator (5x faster than numpy's normal here), seeded from `rng`
    # so a frame stays a function of the seed; OpenCV's default generator is per thread.
    noise = np.empty_like(image)
    cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
    cv2.randn(noise, 0.0, float(nu.camera_noise))
    frame = np.clip(cv2.scaleAdd(image, 255.0, noise), 0, 255).astype(np.uint8)
    counts = {name: 0 for name in sample.composition}
    for fibre_drawn in drawn:
        counts[fibre_drawn.name] += 1
    return frame, FrameTruth(counts, drawn, blur_um)

"""Masks: no label, dust or glare pixel reaches the model as content, on the virtual microscope's real frames."""

import cv2
import numpy as np
import pytest

from isic_drivers.camera import CameraSource
from isic_drivers.emulators.microscope import label_box, label_decorator
from isic_drivers.lab import SampleStage, render_frame
from isic_drivers.lab.sample import draw_sample
from isic_model import SHIPPED_MANIFEST
from isic_station.acquisition.sample_label import label_boxes
from isic_station.manifest import load_manifest
from isic_station.preprocess.image import (
    NoUsableTiles,
    build_image_input,
    dust_mask,
    fibre_mask,
    glare_mask,
    rescale_frame,
    to_grey,
)

CAMERA_UM_PER_PX = 1.0
IMAGE = load_manifest(SHIPPED_MANIFEST).image      # the shipped model: 64 px tiles at 2.4 µm/px


def line_frames(tmp_path, options: str, count: int, seed: int = 41):
    """`count` frames of a production line (one new sample per frame) from the virtual microscope."""
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_line(seed, dwell_s=0.02)
    with CameraSource(f"virtual:?stage={stage.path}&{options}", width=640, height=480,
                      um_per_px=CAMERA_UM_PER_PX) as camera:
        frames = []
        for frame in camera.frames(limit=count):
            frames.append((frame.image, camera.reader.last_content.sample_id))
        return frames


def tile_box(origin, scale: float, tile_px: int):
    """A model tile's (left, top, right, bottom) in camera pixels."""
    _frame, top, left = origin
    return left / scale, top / scale, (left + tile_px) / scale, (top + tile_px) / scale


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_no_tile_touching_a_printed_label_reaches_the_model(tmp_path):
    scale = CAMERA_UM_PER_PX / IMAGE["um_per_px"]
    frames = line_frames(tmp_path, "label=1", 12)
    for image, sample_id in frames:
        left, top, side = label_box(sample_id, 640, 480)
        label = (left, top, left + side, top + side)
        info = build_image_input([image], CAMERA_UM_PER_PX, IMAGE)
        assert info.label_px > 0
        assert info.tiles_masked >= 1
        assert not any(overlaps(tile_box(o, scale, IMAGE["tile_px"]), label) for o in info.origins)


def test_the_label_mask_covers_the_code_opencv_finds_and_its_quiet_zone():
    """Labelled frames drawn from fixed seeds: a line paced by the clock showed other samples on a loaded
    machine, and once a second, false box beside the code (the detector's rare false box, as on
    unlabelled frames in the next test)."""
    rng = np.random.default_rng(41)
    detector = cv2.QRCodeDetector()
    scale = CAMERA_UM_PER_PX / IMAGE["um_per_px"]
    quiet = 4 * 6 * scale            # the label's 4-module quiet zone of 6 px modules, at model scale
    checked = extra = 0
    for index in range(8):
        frame, _truth = render_frame(draw_sample(rng, "default"), rng, 640, 480, CAMERA_UM_PER_PX,
                                     decorate=label_decorator(f"L0041-{index:06d}"))
        grey = to_grey(rescale_frame(frame, CAMERA_UM_PER_PX, IMAGE["um_per_px"]))
        boxes = label_boxes(grey, IMAGE["um_per_px"])
        found, points = detector.detect(frame)
        if not found:   # OpenCV reads about 89 in 90 of these codes: a fibre over the code can hide a finder
            continue
        checked += 1
        code = points.reshape(-1, 2) * scale
        covering = [(x, y, w, h) for x, y, w, h in boxes
                    if x <= code[:, 0].min() - quiet + 1 and x + w >= code[:, 0].max() + quiet - 1
                    and y <= code[:, 1].min() - quiet + 1 and y + h >= code[:, 1].max() + quiet - 1]
        assert len(covering) == 1, (index, boxes)
        extra += len(boxes) - 1
    assert checked >= 6
    assert extra <= 1


def test_frames_without_a_label_rarely_lose_a_tile_to_a_false_label():
    rng = np.random.default_rng(11)
    false = 0
    for preset in ("default", "dark_dyes", "thin", "low_snr"):
        for _ in range(6):
            frame, _truth = render_frame(draw_sample(rng, preset), rng, 640, 480, CAMERA_UM_PER_PX)
            grey = to_grey(rescale_frame(frame, CAMERA_UM_PER_PX, IMAGE["um_per_px"]))
            false += len(label_boxes(grey, IMAGE["um_per_px"]))
    assert false <= 2     # of 24 fibre-filled frames of every kind


@pytest.mark.parametrize("defocus_um", [1.5, 3.0])
def test_a_defocused_label_is_still_found(defocus_um):
    """Defocus up to the plant's 3 um lowers every edge alike: at a fixed ink threshold the labels went unfound
    from 3 um on and reached the model as fibre (`bench accuracy --preset plant`: 208 label tiles in 339
    measurements)."""
    rng = np.random.default_rng(23)
    scale = CAMERA_UM_PER_PX / IMAGE["um_per_px"]
    for index in range(8):
        text = f"L7001-{index:06d}"
        frame, _truth = render_frame(draw_sample(rng, "plant"), rng, 640, 480, CAMERA_UM_PER_PX,
                                     defocus_um=defocus_um, decorate=label_decorator(text))
        grey = to_grey(rescale_frame(frame, CAMERA_UM_PER_PX, IMAGE["um_per_px"]))
        left, top, side = (v * scale for v in label_box(text, 640, 480))
        centre = (left + side / 2, top + side / 2)
        assert any(x <= centre[0] <= x + w and y <= centre[1] <= y + h
                   for x, y, w, h in label_boxes(grey, IMAGE["um_per_px"])), (defocus_um, index)


def test_dust_is_ignored_and_painted_over_but_fibres_are_not():
    grey = np.full((200, 260), 220, np.uint8)
    grey[:, 100:110] = 120                                   # a fibre from top to bottom
    cv2.circle(grey, (40, 40), 3, 60, -1)                    # a dust speck, ~17 µm across at 2.4 µm/px
    dust = dust_mask(fibre_mask(grey), 2.4)
    assert dust[40, 40] and not dust[:, 100:110].any()
    frame = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    params = dict(IMAGE, tiles_per_measurement=12, mean=0.0, std=1.0)
    info = build_image_input([frame], 2.4, params)
    assert info.ignored_px == int(dust.sum())
    row = info.origins.index((0, 0, 0))                      # the tile holding the speck
    assert info.batch[row].min() > 0.8                       # painted with the glass around it


def test_glare_from_the_virtual_microscope_is_ignored_and_never_dominates_a_tile(tmp_path):
    frames = [image for image, _ in line_frames(tmp_path, "glare=1", 6)]
    ignored = 0
    for image in frames:
        grey = to_grey(rescale_frame(image, CAMERA_UM_PER_PX, IMAGE["um_per_px"]))
        glare = glare_mask(grey, IMAGE["um_per_px"])
        info = build_image_input([image], CAMERA_UM_PER_PX, IMAGE)
        ignored += info.ignored_px
        p = IMAGE["tile_px"]
        for _frame, top, left in info.origins[: len(info.origins) - info.repeated]:
            assert glare[top:top + p, left:left + p].mean() <= 0.5
    assert ignored > 0


def test_a_frame_that_is_all_label_gives_no_image_input():
    paper = np.full((160, 160), 240, np.uint8)
    code = cv2.QRCodeEncoder.create().encode("ISIC-ALL-LABEL")
    paper[20:140, 20:140] = cv2.resize(code, (120, 120), interpolation=cv2.INTER_NEAREST)
    with pytest.raises(NoUsableTiles, match="touch a sample label"):
        build_image_input([cv2.cvtColor(paper, cv2.COLOR_GRAY2BGR)], 2.4, IMAGE)


def test_a_sharp_label_does_not_let_a_blurred_frame_through_the_gate(tmp_path):
    from isic_station.acquisition.quality_gate import QualityGate

    gate = QualityGate(um_per_px=CAMERA_UM_PER_PX)
    blurred = [image for image, _ in line_frames(tmp_path, "label=1&fault=blur", 4)]
    assert all("blurred" in gate.assess(image).reasons for image in blurred)


def test_a_label_found_in_one_frame_blocks_its_tiles_in_every_frame_of_the_measurement(tmp_path):
    """The label detector misses a label now and then; camera and sample hold still within a measurement, so
    the tiles where one frame shows the label are left out of every frame (here the other frame shows fabric
    there, which it alone would give the model)."""
    scale = CAMERA_UM_PER_PX / IMAGE["um_per_px"]
    (labelled, sample_id), = line_frames(tmp_path / "a", "label=1", 1)
    (plain, _), = line_frames(tmp_path / "b", "", 1, seed=42)
    left, top, side = label_box(sample_id, 640, 480)
    label = (left, top, left + side, top + side)
    params = dict(IMAGE, max_tiles=96)

    def at_label(info, frame):
        return [o for o in info.origins if o[0] == frame and overlaps(tile_box(o, scale, IMAGE["tile_px"]), label)]

    assert at_label(build_image_input([plain], CAMERA_UM_PER_PX, params), 0)   # alone, its tiles there are used
    both = build_image_input([labelled, plain], CAMERA_UM_PER_PX, params)
    assert at_label(both, 0) == [] and at_label(both, 1) == []
    assert both.tiles_masked >= 2 * len(set(at_label(build_image_input([plain], CAMERA_UM_PER_PX, params), 0)))

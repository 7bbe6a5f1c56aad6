"""Sample ids from the QR label the virtual microscope prints into its frames, raw and after MJPG."""

import numpy as np

from isic_drivers.camera import CameraSource
from isic_drivers.lab import render_frame
from isic_station.acquisition.sample_label import SampleLabelReader, read_sample_label


def labelled_frames(stage, count: int, label: bool = True):
    source = f"virtual:?stage={stage.path}&label={int(label)}&width=480&height=360"
    with CameraSource(source) as camera:
        return [f.image for f in camera.frames(limit=count)]


def test_the_label_printed_by_the_virtual_microscope_is_read_back(labelled_stage):
    assert read_sample_label(labelled_frames(labelled_stage, 1)[0]) == "ISIC-LOT7-0042"


def test_the_label_survives_the_mjpg_codec(tmp_path, labelled_stage, write_video):
    video = tmp_path / "labelled.avi"
    write_video(video, labelled_frames(labelled_stage, 3))
    reader = SampleLabelReader(every_n=1)
    with CameraSource(str(video)) as camera:
        ids = [reader.read(f.image) for f in camera.frames()]
    assert ids == ["ISIC-LOT7-0042"] * 3


def test_a_frame_without_a_label_gives_none(labelled_stage):
    assert read_sample_label(labelled_frames(labelled_stage, 1, label=False)[0]) is None
    assert read_sample_label(np.full((240, 320, 3), 200, np.uint8)) is None


def test_offer_reads_only_every_nth_frame_and_remembers_the_last_id(labelled_stage):
    labelled = labelled_frames(labelled_stage, 1)[0]
    plain = labelled_frames(labelled_stage, 1, label=False)[0]
    reader = SampleLabelReader(every_n=3)
    # offers 1..5: only offers 1 and 4 are read; the label shows on offers 2 and 4
    assert [reader.offer(f) for f in (plain, labelled, plain, labelled, plain)] == [
        None, None, None, "ISIC-LOT7-0042", "ISIC-LOT7-0042"]


EAN_L = ("0001101", "0011001", "0010011", "0111101", "0100011", "0110001", "0101111", "0111011", "0110111",
         "0001011")
EAN_PARITY = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG", "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")


def ean13_image(digits: str, module_px: int = 3, height_px: int = 120) -> np.ndarray:
    """An EAN-13 barcode as a printed label (OpenCV can read barcodes but not draw them)."""
    def right(d: int) -> str:
        return "".join("1" if b == "0" else "0" for b in EAN_L[d])

    left = "".join(EAN_L[int(d)] if p == "L" else right(int(d))[::-1]
                   for d, p in zip(digits[1:7], EAN_PARITY[int(digits[0])]))
    bits = "0" * 11 + "101" + left + "01010" + "".join(right(int(d)) for d in digits[7:]) + "101" + "0" * 11
    row = np.array([0 if b == "1" else 255 for b in bits], np.uint8).repeat(module_px)
    return np.tile(row, (height_px, 1))


def test_a_barcode_label_under_the_lab_optics_is_read_when_there_is_no_qr_code(labelled_stage):
    label = ean13_image("4006381333931", module_px=2, height_px=80).astype(np.float32) / 255.0

    def print_label(image: np.ndarray) -> None:     # on the slide, before optics and camera noise
        image[300:380, 20 : 20 + label.shape[1]] = label[..., None]

    for seed in range(3):
        frame, _ = render_frame(labelled_stage.current(), np.random.default_rng(seed), 480, 400, 1.0,
                                decorate=print_label)
        assert read_sample_label(frame) == "4006381333931"

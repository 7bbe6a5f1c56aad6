"""The virtual microscope through CameraSource: the stage's sample, its options, unplug and stall faults."""

import numpy as np
import pytest

from isic_common.errors import ConfigError, DeviceError
from isic_drivers.camera import CameraSource
from isic_drivers.emulators.microscope import VirtualMicroscope
from isic_drivers.lab import Sample, SampleStage


def test_frames_show_the_sample_on_the_stage_and_follow_a_change(tmp_path, labelled_stage):
    with CameraSource(f"virtual:?stage={labelled_stage.path}", width=320, height=240) as camera:
        frame = camera.read()
        shown = camera.reader.last_content
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
        assert shown == labelled_stage.current()
        assert set(camera.reader.last_truth.counts) == set(shown.composition)
        assert sum(camera.reader.last_truth.counts.values()) > 0
        labelled_stage.put_sample(Sample({"wool": 1.0}, sample_id="NEXT-1"))
        camera.read()
        assert camera.reader.last_content.sample_id == "NEXT-1"
        assert set(camera.reader.last_truth.counts) == {"wool"}


def test_the_same_seed_gives_the_same_frames(labelled_stage):
    def first_two(seed: int):
        with CameraSource(f"virtual:?stage={labelled_stage.path}&seed={seed}", width=160, height=120) as cam:
            return [f.image for f in cam.frames(limit=2)]

    a, b, c = first_two(5), first_two(5), first_two(6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_without_a_stage_file_it_shows_the_production_line_of_its_seed():
    reader = VirtualMicroscope.from_options({"seed": "3", "dwell": "1000"}, width=160, height=120)
    reader.open()
    reader.read()
    assert reader.last_content == SampleStage.production_line(seed=3, dwell_s=1000.0).current()
    assert reader.last_content.sample_id.startswith("L3-")


def test_unknown_options_and_faults_are_config_errors_naming_them():
    with pytest.raises(ConfigError, match="colour"):
        CameraSource("virtual:?colour=red")
    with pytest.raises(ConfigError, match="smoke"):
        CameraSource("virtual:?fault=smoke")
    with pytest.raises(ConfigError, match="seed"):
        CameraSource("virtual:?seed=three")


def test_options_can_come_from_the_constructor_as_well(labelled_stage):
    camera = CameraSource("virtual:", width=200, height=100, options={"stage": str(labelled_stage.path)})
    with camera:
        assert camera.read().image.shape == (100, 200, 3)
        assert camera.reader.last_content.sample_id == "ISIC-LOT7-0042"


def test_an_unplugged_microscope_is_reconnected_with_backoff_and_counted():
    camera = CameraSource("virtual:?fault=unplug&fault_after=2&fault_s=0.6&width=160&height=120",
                          backoff_initial_s=0.05, read_timeout_s=5.0)
    with camera:
        frames = list(camera.frames(limit=4))
        stats = camera.stats()
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert frames[2].monotonic - frames[1].monotonic >= 0.6
    assert stats.reconnects_last_hour == 1 and stats.reconnects_total == 1
    assert "unplugged" in stats.last_error
    assert stats.connected and stats.frames_read == 4


def test_an_unplugged_microscope_past_the_read_timeout_is_a_device_error():
    camera = CameraSource("virtual:?fault=unplug&fault_after=1&fault_s=30&width=160&height=120",
                          backoff_initial_s=0.05, backoff_max_s=0.2)
    with camera:
        camera.read()
        with pytest.raises(DeviceError, match="camera virtual:.*no frame within 0.5 s.*unplugged"):
            camera.read(timeout_s=0.5)
        assert camera.stats().connected is False


def test_a_stalled_read_is_counted_as_a_stall_without_a_reconnect():
    camera = CameraSource("virtual:?fault=stall&fault_after=1&fault_s=0.4&width=160&height=120", stall_s=0.3)
    with camera:
        frames = list(camera.frames(limit=3))
        stats = camera.stats()
    assert len(frames) == 3
    assert stats.stalls_last_hour == 1 and stats.reconnects_total == 0

"""The emulated instrument's line clock (8N1 at its baud rate, integration before the reply) and
on-instrument averaging, with the driver's fall-back to host co-adding when the firmware NACKs it.

Real parts: the emulator process on a pseudo-terminal, the driver on pyserial. The timing checks are
lower bounds (a paced reply cannot come sooner than the line carries it) or a wide ratio, so a busy
machine cannot fail them.
"""

import statistics
import time

import numpy as np
import pytest

from isic_drivers.lab.sample import Sample
from isic_drivers.lab.stage import SampleStage
from isic_drivers.obp.codec import MIN_FRAME_SIZE, MessageType
from isic_drivers.obp.spectrometer import ObpSpectrometer
from isic_drivers.obp.transport import SerialTransport, line_seconds

COTTON = Sample({"cotton": 1.0}, sample_id="cotton-nominal")
PIXELS = 256
INTEGRATION_US = 2000


def open_driver(port: str) -> ObpSpectrometer:
    return ObpSpectrometer(SerialTransport(port, read_timeout_s=2.0), retries=1)


def spectrum_seconds(spectrometer: ObpSpectrometer, repeats: int = 5) -> float:
    """Median time of one raw-spectrum request and reply."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        spectrometer.raw_spectrum()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@pytest.fixture
def stage(tmp_path):
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_sample(COTTON)
    return stage


def paced_spectrum_seconds(start_emulator, stage, *options: str) -> float:
    """Median time of one spectrum from a fresh emulator started with `options`."""
    emulator = start_emulator("--stage", str(stage.path), *options)
    spectrometer = open_driver(emulator.port)
    try:
        spectrometer.set_integration_time_us(INTEGRATION_US)
        return spectrum_seconds(spectrometer)
    finally:
        spectrometer.transport.close()


def test_paced_replies_take_the_lines_time_and_no_pace_does_not(start_emulator, stage):
    request_and_reply = MIN_FRAME_SIZE + (MIN_FRAME_SIZE + 2 * PIXELS)  # 64 + 576 bytes
    for baud in (115200, 230400):
        took = paced_spectrum_seconds(start_emulator, stage, "--baud", str(baud))
        expected = line_seconds(request_and_reply, baud) + INTEGRATION_US / 1e6
        assert took >= 0.95 * expected, (baud, took, expected)
        assert took < expected + 0.25
    unpaced = paced_spectrum_seconds(start_emulator, stage, "--no-pace")
    assert unpaced < 0.5 * (line_seconds(request_and_reply, 115200) + INTEGRATION_US / 1e6)


def noise_ratio(spectrometer: ObpSpectrometer, scans: int) -> float:
    """Single-scan noise over the noise of the mean of `scans` (about sqrt(scans))."""
    single = np.std(spectrometer.coadd(1) - spectrometer.coadd(1)) / np.sqrt(2)
    averaged = np.std(spectrometer.coadd(scans) - spectrometer.coadd(scans)) / np.sqrt(2)
    return float(single / averaged)


def spectrum_replies(spectrometer: ObpSpectrometer, scans: int) -> int:
    """Spectrum transfers one `coadd(scans)` takes (spectrum requests written)."""
    written = []
    request = spectrometer.request

    def counting(message_type, *args, **kwargs):
        written.append(message_type)
        return request(message_type, *args, **kwargs)

    spectrometer.request = counting
    try:
        spectrometer.coadd(scans)
    finally:
        del spectrometer.request
    return written.count(MessageType.GET_RAW_SPECTRUM)


def test_the_instrument_averages_and_one_spectrum_crosses_the_line(start_emulator, stage):
    emulator = start_emulator("--stage", str(stage.path), "--baud", "921600")
    spectrometer = open_driver(emulator.port)
    try:
        spectrometer.set_integration_time_us(INTEGRATION_US)
        assert spectrum_replies(spectrometer, 16) == 1
        assert spectrometer.averaging_supported and spectrometer.get_scans_to_average() == 16
        assert 2.5 < noise_ratio(spectrometer, 16) < 6.5  # sqrt(16) = 4
        assert spectrometer.get_scans_to_average() == 16  # the last coadd(16) left it there
        started = time.perf_counter()
        spectrometer.coadd(16)
        # the instrument integrated 16 times before answering (paced emulator)
        assert time.perf_counter() - started >= 0.95 * 16 * INTEGRATION_US / 1e6
        assert spectrum_replies(spectrometer, 1) == 1 and spectrometer.get_scans_to_average() == 1
    finally:
        spectrometer.transport.close()


def test_firmware_without_averaging_nacks_and_the_host_co_adds(start_emulator, stage):
    emulator = start_emulator("--stage", str(stage.path), "--no-averaging", "--no-pace")
    spectrometer = open_driver(emulator.port)
    try:
        assert spectrometer.set_scans_to_average(16) is False
        assert spectrometer.averaging_supported is False
        assert spectrum_replies(spectrometer, 16) == 16
        assert 2.5 < noise_ratio(spectrometer, 16) < 6.5
        assert spectrometer.retried_requests == 0  # a NACK of an unknown message is not retried
    finally:
        spectrometer.transport.close()


def test_averaging_is_set_again_after_the_port_reopens(start_emulator, tmp_path, stage):
    link = str(tmp_path / "spectrometer")
    first = start_emulator("--stage", str(stage.path), "--link", link, "--no-pace")
    spectrometer = ObpSpectrometer(SerialTransport(link, read_timeout_s=1.0, backoff_initial_s=0.05,
                                                   backoff_max_s=0.2), retries=4)
    try:
        spectrometer.coadd(8)
        assert first.stop() == 0  # the instrument is unplugged ...
        start_emulator("--stage", str(stage.path), "--link", link, "--no-pace")  # ... and a fresh one plugged in
        opens = spectrometer.transport.stats.opens
        spectrometer.coadd(8)  # finds the line gone, reopens it, and sets the new instrument up
        assert spectrometer.transport.stats.opens > opens
        assert spectrometer.get_scans_to_average() == 8
    finally:
        spectrometer.transport.close()

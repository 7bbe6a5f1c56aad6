"""The driver against the emulated instrument over a real pseudo-terminal, faults on, calibrated spectra out."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from isic_drivers.lab.instrument import InstrumentModel
from isic_drivers.lab.sample import Sample, with_nuisance
from isic_drivers.lab.spectra import reflectance as lab_reflectance
from isic_drivers.lab.stage import SampleStage
from isic_drivers.obp.codec import InvalidPayload
from isic_drivers.obp.spectrometer import ObpSpectrometer
from isic_drivers.obp.transport import SerialTransport
from isic_station.acquisition.calibration import CalibrationStore

ALL_FAULTS = ["--fault", "garbage=0.15", "--fault", "checksum=0.08", "--fault", "drop=0.05",
              "--fault", "delay=0.05", "--fault", "nack=0.08", "--fault", "reopen=0.04",
              "--delay-s", "0.6", "--reopen-s", "0.2"]
COTTON = Sample({"cotton": 1.0}, sample_id="cotton-nominal")


def driver(port, timeout_s=0.4, retries=8):
    transport = SerialTransport(port, read_timeout_s=timeout_s, backoff_initial_s=0.05, backoff_max_s=0.4)
    return ObpSpectrometer(transport, retries=retries)


def test_instrument_features_without_faults(start_emulator, tmp_path):
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_sample(COTTON)
    emulator = start_emulator("--stage", str(stage.path), "--serial", "NIR-42", "--pixels", "128",
                              "--range", "950", "1650")
    spectrometer = driver(emulator.port)
    try:
        assert spectrometer.serial_number() == "NIR-42"
        axis = spectrometer.wavelengths()
        assert len(axis) == 128 and axis[0] == pytest.approx(950) and axis[-1] == pytest.approx(1650, abs=1e-3)
        spectrometer.set_integration_time_us(4000)
        assert spectrometer.integration_time_us() == 4000
        spectrometer.set_trigger_mode(1)
        assert spectrometer.baud_rate() == 115200
        spectrometer.set_baud_rate(921600)
        assert spectrometer.baud_rate() == 921600 and spectrometer.transport.baudrate == 921600
        with pytest.raises(InvalidPayload, match="integration time 5 us"):
            spectrometer.set_integration_time_us(5)
        raw = spectrometer.raw_spectrum()
        assert raw.dtype == np.uint16 and raw.shape == (128,) and raw.max() > 2000
        single_sd = np.std(spectrometer.raw_spectrum().astype(float) - spectrometer.raw_spectrum()) / np.sqrt(2)
        first, second = spectrometer.coadd(16), spectrometer.coadd(16)
        coadded_sd = np.std(first - second) / np.sqrt(2)
        assert first.dtype == np.float64 and first.shape == (128,)
        assert 2.5 < single_sd / coadded_sd < 6.5  # sqrt(16) = 4
    finally:
        spectrometer.transport.close()
    assert emulator.stop() == 0


def fault_evidence(health):
    """Which fault modes the driver has met so far, from its counters."""
    return {
        "retried (drop, nack, delay, checksum)": health["retried_requests"] > 0,
        "late reply ignored (delay)": health["stale_replies"] > 0,
        "bad checksum skipped": health["scanner_checksum_failures"] > 0,
        "garbage discarded": health["scanner_discarded_bytes"] > 0,
        "line reopened": health["reconnects"] > 0,
    }


def test_calibrated_spectra_with_every_fault_on(start_emulator, tmp_path):
    """Calibrate, then measure until the driver has come through every fault mode; every spectrum is right."""
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_reference("dark")
    link = str(tmp_path / "spectrometer")
    emulator = start_emulator("--stage", str(stage.path), "--link", link, "--noise-seed", "5", *ALL_FAULTS)
    assert emulator.port == link
    spectrometer = driver(link)
    store = CalibrationStore(tmp_path / "calibration")
    truth = lab_reflectance(COTTON, InstrumentModel().true_axis(COTTON.nuisance)) / 0.99  # white tile R = 0.99
    try:
        serial = spectrometer.serial_number()
        axis = spectrometer.wavelengths()
        band = (axis > 950) & (axis < 1650)
        store.capture(spectrometer, "dark", scans=8)
        stage.put_reference("white")
        store.capture(spectrometer, "white", scans=8)
        stage.put_sample(COTTON)
        deadline = time.monotonic() + 60
        measurements = 0
        while not all(fault_evidence(spectrometer.health()).values()) and time.monotonic() < deadline:
            measured, flags = store.reflectance(spectrometer.coadd(4), serial=serial,
                                                integration_us=spectrometer.integration_time_us())
            measurements += 1
            assert flags == ()
            assert np.median(np.abs(measured[band] - truth[band])) < 0.02
        health = spectrometer.health()
    finally:
        spectrometer.transport.close()
    assert measurements > 0
    assert all(fault_evidence(health).values()), fault_evidence(health)
    assert emulator.stop() == 0
    assert not os.path.lexists(link)


def test_lamp_ageing_shows_as_white_drift(start_emulator, tmp_path):
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_reference("dark")
    emulator = start_emulator("--stage", str(stage.path), "--lamp-drift", "360")  # 10 % per second
    spectrometer = driver(emulator.port)
    store = CalibrationStore(tmp_path / "calibration", drift_threshold=0.03)
    try:
        store.capture(spectrometer, "dark", scans=4)
        stage.put_reference("white")
        store.capture(spectrometer, "white", scans=4)
        assert "white_drift" not in store.flags()
        time.sleep(0.5)
        ratio = store.check_white(spectrometer, scans=4)
    finally:
        spectrometer.transport.close()
    assert 0.85 < ratio < 0.97
    assert "white_drift" in store.flags()


def test_bad_fault_option_is_one_line_config_error():
    command = [sys.executable, "-m", "isic_station.cli", "emulate", "spectrometer", "--fault", "noise=0.1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert result.stdout == "" and result.stderr.count("\n") == 1 and "unknown fault 'noise'" in result.stderr


def test_silent_port_is_a_clear_timeout_after_bounded_retries(tmp_path):
    """A port where nothing answers: a ReplyTimeout naming the port, after exactly retries + 1 requests."""
    from isic_drivers.emulators.pseudo_terminal import PseudoTerminal
    from isic_drivers.obp.transport import ReplyTimeout

    line = PseudoTerminal()
    try:
        spectrometer = driver(line.path, timeout_s=0.2, retries=2)
        started = time.monotonic()
        with pytest.raises(ReplyTimeout, match=f"spectrometer on {line.path} did not answer .* 3 attempts"):
            spectrometer.serial_number()
        assert time.monotonic() - started < 2.0
        assert spectrometer.health()["frames_written"] == 3
        spectrometer.transport.close()
    finally:
        line.remove()


def test_temperature_sensor_reads_the_room_of_the_sample(start_emulator, tmp_path):
    """The emulated sensor reads the lab's temperature_c of what is on the stage (a pinned `--set` wins);
    firmware without a sensor NACKs, and the driver answers None instead of failing."""
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_sample(with_nuisance(COTTON, temperature_c=27.25))
    spectrometer = driver(start_emulator("--stage", str(stage.path)).port)
    try:
        assert spectrometer.temperature_c() == pytest.approx(27.25)
        assert spectrometer.temperature_sensors == 1 and spectrometer.temperature_c(sensor=1) is None
        stage.put_sample(with_nuisance(COTTON, temperature_c=9.5))
        assert spectrometer.temperature_c() == pytest.approx(9.5)
    finally:
        spectrometer.transport.close()
    pinned = driver(start_emulator("--stage", str(stage.path), "--set", "temperature_c=41").port)
    without = driver(start_emulator("--stage", str(stage.path), "--no-temperature").port)
    try:
        assert pinned.temperature_c() == pytest.approx(41.0)
        assert without.temperature_c() is None and without.temperature_sensors == 0
        assert without.serial_number()  # the NACK left the link usable
    finally:
        pinned.transport.close()
        without.transport.close()

"""A bench instrument in a preset's state: its references and its samples share the lamp and the detector,
as each lab measurement's do, so the station's reflectance is the lab's (not 3-10 times too dark)."""

import numpy as np
import pytest

from isic_drivers.emulators.spectrometer import EmulatedSpectrometer
from isic_drivers.lab import LabConfigError, SampleStage, simulate_measurement
from isic_drivers.lab.instrument import InstrumentModel
from isic_drivers.lab.sample import PRESETS, REFERENCED_KEYS, instrument_state, typical_value


def test_instrument_state_takes_the_middle_of_each_referenced_range() -> None:
    state = instrument_state("low_snr")
    assert set(state) == set(REFERENCED_KEYS)
    assert state["lamp_intensity"] == pytest.approx(0.2)            # uniform [0.1, 0.3]
    assert state["detector_noise"] == pytest.approx(20.0)           # uniform [10, 30]
    assert state["dark_current_factor"] == pytest.approx(np.sqrt(1.5 * 4.0))  # loguniform [1.5, 4]
    for preset in PRESETS:   # every preset's state lies in its ranges
        for key, value in instrument_state(preset).items():
            spec = PRESETS[preset]["params"][key]
            if not isinstance(spec, dict):
                assert value == spec, (preset, key)
                continue
            low, high = spec.get("uniform", spec.get("loguniform", spec.get("clip", (-np.inf, np.inf))))
            assert low <= value <= high, (preset, key)
    assert typical_value({"uniform": [0.0, 0.6], "p_zero": 0.7}, "dye_darkness") == 0.0
    with pytest.raises(LabConfigError, match="unknown preset"):
        instrument_state("foggy")


def _station_reflectance(stage: SampleStage, device: EmulatedSpectrometer, scans: int = 8) -> np.ndarray:
    """(S - D) / (W - D) as the station computes it: dark and white tiles first, then the line's sample."""
    means = {}
    for kind in ("dark", "white"):
        stage.put_reference(kind)
        means[kind] = np.mean([device.scan() for _ in range(scans)], axis=0)
    stage.put_line(seed=7001, dwell_s=3600.0, preset="low_snr")
    sample = np.mean([device.scan() for _ in range(scans)], axis=0)
    return (sample - means["dark"]) / np.maximum(means["white"] - means["dark"], 1.0)


def test_pinned_bench_instrument_gives_the_lab_reflectance_level(tmp_path) -> None:
    instrument = InstrumentModel()
    stage = SampleStage(tmp_path / "stage.json")
    stage.put_line(seed=7001, dwell_s=3600.0, preset="low_snr")
    sample = stage.current()
    lab = simulate_measurement(sample, np.random.default_rng(0), instrument, coadd=8, n_frames=0)
    band = slice(40, -40)   # away from the detector's dim ends
    pinned = _station_reflectance(stage, EmulatedSpectrometer(stage, instrument,
                                                              overrides=instrument_state("low_snr")))
    unpinned = _station_reflectance(stage, EmulatedSpectrometer(stage, instrument))
    level = float(np.median(lab.reflectance[band]))
    assert float(np.median(pinned[band])) == pytest.approx(level, rel=0.1)
    # the sample's own 10-30 % lamp over a white taken at the full lamp: far too dark
    assert float(np.median(unpinned[band])) < 0.5 * level


def test_the_station_refuses_a_white_under_low_snr_typical_lamp_until_the_integration_is_raised(tmp_path) -> None:
    from isic_station.acquisition.calibration import reference_problem

    stage = SampleStage(tmp_path / "stage.json")
    device = EmulatedSpectrometer(stage, InstrumentModel(), overrides=instrument_state("low_snr"))
    problems = []
    for integration_us in (8000, 16000):
        device.integration_us = integration_us
        stage.put_reference("dark")
        dark = np.mean([device.scan() for _ in range(4)], axis=0)
        stage.put_reference("white")
        white = np.mean([device.scan() for _ in range(4)], axis=0)
        problems.append(reference_problem("white", white, dark))
    assert problems[0] is not None and "too little light" in problems[0] and "integration_us" in problems[0]
    assert problems[1] is None

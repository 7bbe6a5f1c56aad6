"""The fibre set is data: a new fibre in a copy of fibres.json works everywhere without code."""

import json

import numpy as np
import pytest

from isic_drivers.lab import LabConfigError, blend_classes, composition_vector, draw_sample, load_fibres, render_frame
from isic_drivers.lab.fibres import DEFAULT_FIBRES_PATH
from isic_drivers.lab.spectra import absorbance


def test_adding_a_fibre_needs_no_code(tmp_path) -> None:
    data = json.loads(DEFAULT_FIBRES_PATH.read_text())
    linen = next(f for f in data["fibres"] if f["name"] == "linen")
    ramie = dict(linen, name="ramie", diameter_um=[25, 35], density_g_cm3=1.51,
                 tag_weights={"crystalline": 0.8, "amorphous": 0.2}, extra_bands=[])
    data["fibres"].append(ramie)
    data["default_set"] = data["default_set"] + ["ramie"]
    path = tmp_path / "fibres.json"
    path.write_text(json.dumps(data))

    fibres = load_fibres(path)
    assert list(fibres)[-1] == "ramie" and fibres.default_names[-1] == "ramie"
    station = fibres.default_set()
    assert "ramie" in blend_classes(station) and len(blend_classes(station)) == 6 + 15 + 20
    rng = np.random.default_rng(51)
    drawn = [draw_sample(rng, fibres=station) for _ in range(200)]
    with_ramie = [s for s in drawn if "ramie" in s.composition]
    assert with_ramie
    sample = with_ramie[0]
    assert composition_vector(sample, station).shape == (6,)
    a = absorbance(sample, np.arange(900.0, 2500.0, 5.0), fibres=fibres)
    assert np.all(np.isfinite(a)) and a.max() > 0.05
    _, truth = render_frame(type(sample)({"ramie": 1.0}, sample.nuisance), rng, fibres=fibres)
    assert set(truth.counts) == {"ramie"} and all(d.diameter_um >= 25 for d in truth.fibres)


def test_every_default_fibre_is_complete() -> None:
    fibres = load_fibres()
    assert list(fibres.default_names) == ["cotton", "linen", "viscose", "polyester", "nylon"]
    assert {"wool", "silk", "acrylic", "elastane"} <= set(fibres)
    for fibre in fibres.values():
        assert fibre.bands and fibre.density_g_cm3 > 1.0 and 0 < fibre.diameter_um[0] < fibre.diameter_um[1]
    # the overtone rule: the 2nd-overtone C-H band of PET (1130 nm) is ~10x weaker than its 1st (1660 nm)
    pet = {round(b.centre_nm): b.strength for b in fibres["polyester"].bands}
    assert 0.05 < pet[1130] / pet[1660] < 0.2


def test_a_broken_fibre_file_is_a_clear_error(tmp_path) -> None:
    bad_json = tmp_path / "a.json"
    bad_json.write_text("{")
    with pytest.raises(LabConfigError, match="not valid JSON"):
        load_fibres(bad_json)
    data = json.loads(DEFAULT_FIBRES_PATH.read_text())
    del data["fibres"][0]["density_g_cm3"]
    missing = tmp_path / "b.json"
    missing.write_text(json.dumps(data))
    with pytest.raises(LabConfigError, match="density_g_cm3"):
        load_fibres(missing)
    data = json.loads(DEFAULT_FIBRES_PATH.read_text())
    data["default_set"].append("hemp")
    unknown = tmp_path / "c.json"
    unknown.write_text(json.dumps(data))
    with pytest.raises(LabConfigError, match="hemp"):
        load_fibres(unknown)

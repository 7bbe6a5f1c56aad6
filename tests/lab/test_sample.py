"""Samples: compositions, presets, overrides, labels, serialisation."""

import numpy as np
import pytest

from isic_drivers.lab import (
    LabConfigError,
    Nuisance,
    Sample,
    blend_classes,
    blend_label,
    composition_vector,
    draw_sample,
)
from isic_drivers.lab.fibres import load_fibres
from isic_drivers.lab.sample import PRESETS, parse_overrides, trained_ranges, value_range


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_compositions_sum_to_one_over_one_to_three_fibres(preset: str) -> None:
    rng = np.random.default_rng(11)
    fibres = load_fibres()
    sizes = set()
    for _ in range(400):
        sample = draw_sample(rng, preset)
        values = list(sample.composition.values())
        assert abs(sum(values) - 1.0) < 1e-9
        assert 1 <= len(values) <= 3
        sizes.add(len(values))
        assert set(sample.composition) <= set(fibres.default_names)
        for name, fraction in sample.composition.items():
            assert fibres[name].min_fraction - 1e-9 <= fraction <= 1.0
    assert sizes == {1, 2, 3}


def test_minor_fibres_stay_within_their_fraction_range() -> None:
    """Elastane is 2-8 % of a fabric; it never becomes the main fibre of a blend."""
    rng = np.random.default_rng(12)
    fibres = load_fibres()
    elastane_blends = [draw_sample(rng, fibres=fibres.subset(["cotton", "polyester", "elastane"]), n_fibres=2)
                       for _ in range(200)]
    fractions = [s.composition["elastane"] for s in elastane_blends if "elastane" in s.composition]
    assert fractions and max(fractions) <= 0.08 + 1e-9 and min(fractions) >= 0.02 - 1e-9


def test_blend_label_follows_the_fibre_set_order() -> None:
    assert blend_label(Sample({"polyester": 0.35, "cotton": 0.65})) == "cotton/polyester"
    assert blend_label({"nylon": 0.2, "viscose": 0.5, "linen": 0.3}) == "linen/viscose/nylon"
    classes = blend_classes()
    assert len(classes) == 5 + 10 + 10 and classes[0] == "cotton" and "cotton/polyester" in classes
    assert len(set(classes)) == len(classes)


def test_composition_vector_is_in_set_order() -> None:
    v = composition_vector(Sample({"polyester": 0.25, "cotton": 0.75}))
    np.testing.assert_allclose(v, [0.75, 0, 0, 0.25, 0])
    with pytest.raises(ValueError, match="wool"):
        composition_vector(Sample({"wool": 1.0}))


def test_unknown_override_is_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="humdity"):
        draw_sample(rng, overrides={"humdity": 0.9})
    with pytest.raises(LabConfigError, match="known:"):
        draw_sample(rng, preset="tropical")
    with pytest.raises(LabConfigError, match="not a number"):
        parse_overrides(["humidity=wet"])


def test_overrides_pin_a_parameter() -> None:
    rng = np.random.default_rng(5)
    values = {draw_sample(rng, overrides={"humidity": 0.9}).nuisance.humidity for _ in range(20)}
    assert values == {0.9}
    assert parse_overrides(["humidity=0.9", "dye_darkness=1"]) == {"humidity": 0.9, "dye_darkness": 1.0}


def test_sample_round_trips_through_a_dict() -> None:
    sample = draw_sample(np.random.default_rng(9), "dark_dyes", sample_id="LOT7-0003")
    again = Sample.from_dict(sample.to_dict())
    assert again == sample
    bad = sample.to_dict()
    bad["nuisance"]["colour"] = 1.0
    with pytest.raises(ValueError, match="colour"):
        Sample.from_dict(bad)
    with pytest.raises(ValueError, match="sum"):
        Sample.from_dict({"composition": {"cotton": 0.5}, "nuisance": {}})


def test_default_nuisance_is_nominal() -> None:
    nu = Nuisance()
    assert nu.humidity == 0.65 and nu.scatter_b == 1.0 and nu.stray_light == 0.0 and nu.lamp_drift == 0.0


def test_trained_ranges_span_every_preset_of_the_mixture():
    assert value_range({"uniform": [18.0, 30.0]}, "t") == (18.0, 30.0)
    assert value_range({"uniform": [0.1, 0.6], "p_zero": 0.3}, "d") == (0.0, 0.6)
    assert value_range({"normal": [0.0, 0.5], "clip": [-1.5, 1.5]}, "w") == (-1.5, 1.5)
    assert value_range({"normal": [1.0, 0.25]}, "n") == (0.0, 2.0)
    assert value_range(22.0, "c") == (22.0, 22.0)
    ranges = trained_ranges({"default": 0.5, "humid": 0.5, "plant": 0.0})
    humid = PRESETS["humid"]["params"]["temperature_c"]["uniform"]
    assert ranges["temperature_c"] == [18.0, humid[1]]  # default's floor, humid's ceiling; plant weighs 0
    assert trained_ranges({"default": 0.7, "plant": 0.3})["temperature_c"] == [5.0, 45.0]
    assert trained_ranges("humid") == trained_ranges({"humid": 1.0})  # a single preset, as train.toml may name
    with pytest.raises(LabConfigError, match="unknown preset"):
        trained_ranges({"tropical": 1.0})

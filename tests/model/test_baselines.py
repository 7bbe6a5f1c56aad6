"""PLS / SVM / PLS-DA baselines and the evaluation's composition figures."""

import numpy as np

from isic_model.baselines import baseline_spectrum_params, fit_baselines
from isic_model.scoring import composition_figures


def _mixtures(rng, pure, n):
    """Linear mixtures of three pure 'spectra' plus noise: PLS should recover the fractions."""
    labels = rng.integers(0, 3, size=n)
    comp = np.zeros((n, 3))
    second = (labels + 1) % 3
    share = rng.uniform(0.55, 0.95, size=n)
    comp[np.arange(n), labels] = share
    comp[np.arange(n), second] = 1 - share
    return comp @ pure + rng.normal(0, 0.01, size=(n, pure.shape[1])), comp, labels


def test_pls_recovers_linear_mixtures_and_classifiers_find_the_major_fibre():
    rng = np.random.default_rng(0)
    pure = rng.normal(size=(3, 30))
    x, comp, labels = _mixtures(rng, pure, 150)
    xt, compt, labelst = _mixtures(rng, pure, 60)
    fitted = fit_baselines(x, comp, labels, 3, max_components=8, folds=3)
    pred = fitted.composition(xt)
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs(pred - compt).mean() < 0.02
    assert 2 <= fitted.pls_components <= 8
    assert np.mean(fitted.svm_classes(xt) == labelst) > 0.9
    assert np.mean(fitted.plsda_classes(xt) == labelst) > 0.9


def test_baseline_preprocessing_is_snv_and_first_derivative_without_standardisation():
    params = {
        "wavelengths_nm": [1.0, 2.0, 3.0],
        "reflectance_clip": [0.01, 1.0],
        "scatter": "none",
        "savgol": None,
        "mean": [5.0] * 3,
        "std": [2.0] * 3,
    }
    base = baseline_spectrum_params(params)
    assert base["scatter"] == "snv" and base["savgol"]["deriv"] == 1
    assert base["mean"] == [0.0] * 3 and base["std"] == [1.0] * 3
    assert params["scatter"] == "none"  # the model's own params are untouched


def test_composition_figures_average_over_the_fibres_a_sample_contains():
    fibres = ["cotton", "linen", "nylon"]
    truth = np.array([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.0, 0.5, 0.5]])
    pred = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.0, 0.3, 0.7]])
    fig = composition_figures(pred, truth, ["cotton", "cotton/linen", "linen/nylon"], fibres)
    assert fig["mae"] == round((0.1 + 0.1 + 0.2) / 3, 4)
    assert fig["mae_per_fibre"] == {"cotton": 0.1, "linen": 0.15, "nylon": 0.2}
    assert fig["mae_per_blend"] == {"cotton/linen": 0.1, "linen/nylon": 0.2}
    assert fig["mae_all_fibres"] == round(np.abs(pred - truth).mean(), 4)

"""The chemometric baselines a textile lab would use instead of ISiC-Net, fitted on the same data.

- Composition: PLS regression on SNV + Savitzky-Golay preprocessed absorbance spectra, with the
  number of latent variables chosen by K-fold cross-validation (mean absolute error); predictions
  are clipped at 0 and renormalised so they are fractions like the network's.
- Blend class: an RBF SVM (C chosen by cross-validation) and PLS-DA (PLS on one-hot labels, argmax).

The spectra reach these models through the station's own `preprocess_spectra`, so the baselines
and the network see the same numbers. scikit-learn is fine here: this runs on the workstation.
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, Sequence

import numpy as np

log = logging.getLogger(__name__)

# SNV then a smoothed first derivative: the textbook NIR pretreatment for PLS on fabrics.
BASELINE_SAVGOL = {"window": 11, "polyorder": 2, "deriv": 1}


def baseline_spectrum_params(model_params: Dict[str, Any]) -> Dict[str, Any]:
    """The model's spectrum parameters with SNV + Savitzky-Golay first derivative and no standardisation."""
    n_points = len(model_params["wavelengths_nm"])
    return dict(
        model_params,
        scatter="snv",
        savgol=dict(BASELINE_SAVGOL),
        mean=[0.0] * n_points,
        std=[1.0] * n_points,
    )


def _normalise_fractions(pred: np.ndarray) -> np.ndarray:
    pred = np.clip(pred, 0.0, None)
    total = pred.sum(axis=1, keepdims=True)
    uniform = np.full_like(pred, 1.0 / pred.shape[1])
    return np.where(total > 1e-9, pred / np.maximum(total, 1e-9), uniform)


@dataclass
class FittedBaselines:
    """PLS (composition), SVM and PLS-DA (blend class), fitted on one training set."""

    pls: Any
    pls_components: int
    svm: Any
    svm_c: float
    plsda: Any
    plsda_components: int
    n_classes: int

    def composition(self, x: np.ndarray) -> np.ndarray:
        """PLS composition [N, F]: clipped at 0, rows renormalised to 1."""
        return _normalise_fractions(self.pls.predict(x))

    def svm_classes(self, x: np.ndarray) -> np.ndarray:
        return self.svm.predict(x)

    def plsda_classes(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.plsda.predict(x), axis=1)

    def summary(self) -> Dict[str, Any]:
        """Hyper-parameters cross-validation picked (reported beside the figures)."""
        return {"pls_components": self.pls_components, "svm_c": self.svm_c, "plsda_components": self.plsda_components}


def fit_baselines(
    x: np.ndarray,
    composition: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    max_components: int = 30,
    folds: int = 5,
    svm_cs: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
    seed: int = 0,
) -> FittedBaselines:
    """Fit PLS, SVM and PLS-DA on preprocessed spectra x [N, S] with cross-validated hyper-parameters."""
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold
    from sklearn.svm import SVC

    max_components = int(min(max_components, x.shape[1], x.shape[0] * (folds - 1) // folds - 1))
    components = list(range(1, max_components + 1))
    kfold = KFold(folds, shuffle=True, random_state=seed)
    pls_search = GridSearchCV(
        PLSRegression(scale=False), {"n_components": components}, cv=kfold, scoring="neg_mean_absolute_error", n_jobs=1
    )
    pls_search.fit(x, composition)
    pls_k = int(pls_search.best_params_["n_components"])
    log.info("PLS: %d components by %d-fold CV (MAE %.4f)", pls_k, folds, -pls_search.best_score_)

    onehot = np.eye(n_classes)[labels]
    plsda_search = GridSearchCV(
        PLSRegression(scale=False), {"n_components": components}, cv=kfold, scoring=_argmax_accuracy, n_jobs=1
    )
    plsda_search.fit(x, onehot)
    plsda_k = int(plsda_search.best_params_["n_components"])

    # Rare classes may have fewer members than folds: fall back to plain K-fold then.
    counts = np.bincount(labels, minlength=n_classes)
    present = counts[counts > 0]
    strat = StratifiedKFold(folds, shuffle=True, random_state=seed) if present.min() >= folds else kfold
    svm_search = GridSearchCV(SVC(kernel="rbf", gamma="scale"), {"C": list(svm_cs)}, cv=strat, n_jobs=1)
    svm_search.fit(x, labels)
    svm_c = float(svm_search.best_params_["C"])
    log.info("PLS-DA: %d components; SVM: C=%g (CV accuracy %.3f)", plsda_k, svm_c, svm_search.best_score_)
    return FittedBaselines(
        pls=pls_search.best_estimator_,
        pls_components=pls_k,
        svm=svm_search.best_estimator_,
        svm_c=svm_c,
        plsda=plsda_search.best_estimator_,
        plsda_components=plsda_k,
        n_classes=n_classes,
    )


def _argmax_accuracy(estimator: Any, x: np.ndarray, onehot: np.ndarray) -> float:
    """PLS-DA scorer: accuracy of argmax over the predicted one-hot columns."""
    return float(np.mean(np.argmax(estimator.predict(x), axis=1) == np.argmax(onehot, axis=1)))

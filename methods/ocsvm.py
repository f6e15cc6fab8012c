"""OC-SVM: Schoelkopf, Platt, Shawe-Taylor, Smola, Williamson, "Estimating the Support of a
High-Dimensional Distribution", Neural Computation 2001. A baseline of HSCL's Table 2
(unsupervised group), run as the Deep SAD experiments run it (Ruff et al. 2020): scikit-learn's
OneClassSVM with a Gaussian kernel on flattened pixels in [0, 1]: raw, as Deep SAD's released
baselines, or after a PCA that keeps `pca_variance` of the variance (fitted on the training images).
# choice: the `small` profile keeps the PCA (95 % of the variance, about 220 of CIFAR-10's 3,072
dimensions): the 35 candidate fits on raw pixels would take most of an hour on one core.

    score(x) = -(w . phi(x) - rho)          (higher = more anomalous)

The fitted model is unsupervised: labels never enter the OC-SVM objective. nu and the kernel scale
gamma are hyper-parameters the papers choose on labeled data (Deep SAD on 10% of the test set); here
they are chosen on a validation part carved from the TRAINING set only, since the method sees nothing
else:

    negatives: a random `holdout` fraction of the unlabeled and labeled-normal images
    positives: the labeled anomalies
    each (nu, gamma) candidate is fitted on the remaining unlabeled / labeled-normal images and
    ranked by AUROC on that part; the best is then refitted on all unlabeled / labeled-normal images.

So labels choose the model and keep the known anomalies out of the final fit, as they are kept out
of a label-free method's training set (Trial.labeled_anomalies = "dropped"): uses_labels = True, and
its gamma_p = 0 column is a clean one-class fit like the papers'. Without labeled anomalies
(gamma_l = 0) nothing can be ranked and the middle candidate of each list is used (nu 0.1, gamma
1 x 'scale').

gamma candidates are multiples of scikit-learn's 'scale' value 1 / (n_features * X.var()):
Deep SAD's absolute grid {2^-7, ..., 2^2} belongs to its own preprocessing (global contrast
normalisation, min-max scaling), which we do not copy, so a grid relative to the data is used.

Measured (quick profile, 1 CPU thread, busy 2-core machine): fit (35 candidates) + score on digits
(~125 training, ~600 test images) takes 0.2-0.4 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import OneClassSVM

from methods.base import TrainSet
from methods.pixels import flat_pixels, pixel_pca


@dataclass(frozen=True)
class OCSVMConfig:
    pca_variance: float = 1.0
    """fraction of the pixel variance a PCA keeps; 1.0: the raw pixels (Deep SAD's baselines)"""
    nu: str = "0.01,0.05,0.1,0.2,0.5"
    """candidates for nu, comma-separated (one value: no search)"""
    gamma: str = "0.125,0.25,0.5,1,2,4,8"
    """candidates for the RBF kernel scale, as multiples of 1 / (n_features * X.var())"""
    holdout: float = 0.2
    """fraction of the unlabeled / labeled-normal training images held out as validation negatives"""


def candidates(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


class OCSVM:
    name = "ocsvm"
    Config = OCSVMConfig
    uses_labels = True  # labels choose nu / gamma and keep the known anomalies out of the fit (module docstring)
    # quick and paper: raw pixels (milliseconds a fit on digits). small: a PCA first (module docstring).
    profiles = {"quick": {}, "small": {"pca_variance": 0.95}, "paper": {}}

    def __init__(self, config: OCSVMConfig, device: torch.device, seed: int):
        self.config = config
        self.seed = int(seed)
        self.pca = None
        self.model: OneClassSVM | None = None

    def _model(self, nu: float, gamma_factor: float, x: np.ndarray) -> OneClassSVM:
        scale = 1.0 / (x.shape[1] * x.var())  # scikit-learn's gamma='scale'
        return OneClassSVM(kernel="rbf", nu=nu, gamma=gamma_factor * scale).fit(x)

    def select(self, x: np.ndarray, kind: np.ndarray) -> tuple[float, float, float]:
        """-> (nu, gamma factor, validation AUROC or nan) chosen on the training set's validation part."""
        cfg = self.config
        nus, gammas = candidates(cfg.nu), candidates(cfg.gamma)
        nu0, g0 = nus[len(nus) // 2], gammas[len(gammas) // 2]  # the middle candidates: the fallback
        anomaly = np.flatnonzero(kind == TrainSet.ANOMALY)
        rest = np.random.default_rng(self.seed).permutation(np.flatnonzero(kind != TrainSet.ANOMALY))
        n_val = int(round(cfg.holdout * len(rest)))
        if len(nus) * len(gammas) == 1 or len(anomaly) == 0 or n_val == 0:
            return nu0, g0, float("nan")
        fit_idx, val_idx = rest[n_val:], np.concatenate([rest[:n_val], anomaly])
        val_y = np.r_[np.zeros(n_val), np.ones(len(anomaly))]
        # A few labeled anomalies often rank several candidates perfectly: among equals the one
        # closest to the fallback wins (candidates are tried in that order, the first best is kept).
        grid = sorted(((nu, g) for nu in nus for g in gammas),
                      key=lambda c: abs(np.log(c[0] / nu0)) + abs(np.log(c[1] / g0)))
        best = (-1.0, nu0, g0)
        for nu, g in grid:
            model = self._model(nu, g, x[fit_idx])
            auc = roc_auc_score(val_y, -model.decision_function(x[val_idx]))
            if auc > best[0]:
                best = (auc, nu, g)
        return best[1], best[2], best[0]

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        t0 = time.perf_counter()
        kind = train.kind.cpu().numpy()
        pixels = flat_pixels(train.images)
        self.pca = pixel_pca(self.config.pca_variance, self.seed).fit(pixels[kind != TrainSet.ANOMALY])
        x = self.pca.transform(pixels)  # (N, d), d = components kept
        nu, gamma, val_auroc = self.select(x, kind)
        x = x[kind != TrainSet.ANOMALY]
        self.model = self._model(nu, gamma, x)  # the final model: every image not labeled anomalous
        # "loss": the mean slack max(0, rho - w.phi(x)) of the training images, the data term of
        # the OC-SVM objective (a single fit has no epochs; we report it as epoch 1).
        loss = float(np.maximum(0.0, -self.model.decision_function(x)).mean())
        if on_epoch is not None:
            on_epoch(1, {"loss": loss})
        return {"epochs": 1, "final_loss": loss, "nu": nu, "gamma_factor": gamma, "val_auroc": val_auroc,
                "pixel_features": int(x.shape[1]), "fit_seconds": time.perf_counter() - t0}

    def score(self, images: torch.Tensor) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("OCSVM.score() called before fit()")
        return -self.model.decision_function(self.pca.transform(flat_pixels(images)))

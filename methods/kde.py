"""KDE: Parzen (1962) kernel density estimation, the shallow density baseline of Deep SVDD / Deep
SAD (Ruff et al. 2018, 2020) and of HSCL's Table 2 (unsupervised group): a Gaussian KDE on
flattened pixels in [0, 1] after a PCA keeping `pca_variance` of the variance (methods/pixels.py).

    score(x) = -log p_h(x),  p_h(x) = 1/n sum_i N(x; x_i, h^2 I)      (higher = more anomalous)

Unsupervised: fitted on every training image, labeled ones included, labels ignored. The bandwidth
h is chosen as the Deep SAD code does, by the held-out log-likelihood of a k-fold cross-validation
on the training images (scikit-learn's GridSearchCV): a validation part carved from the training
set that needs no labels, so it works without labeled anomalies too.

Candidates: 2^k for k from log2_bandwidth_min to log2_bandwidth_max in steps of 0.5. Deep SAD's
grid is 2^0.5 ... 2^5 on its own preprocessing; ours reaches lower because 8x8 digits are close
together (nearest-neighbour distances of about 1 in [0, 1] pixels).

Measured (quick profile, 1 CPU thread, busy 2-core machine): fit (21 bandwidths x 5 folds) + score
on digits takes 0.3-0.4 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity

from methods.base import TrainSet
from methods.pixels import flat_pixels, pixel_pca


@dataclass(frozen=True)
class KDEConfig:
    pca_variance: float = 0.95
    """fraction of the pixel variance the PCA keeps"""
    log2_bandwidth_min: float = -4.0
    log2_bandwidth_max: float = 6.0
    """bandwidth candidates 2^k, k = min, min + 0.5, ..., max (equal values: no search)"""
    cv_folds: int = 5
    """folds of the log-likelihood cross-validation that picks the bandwidth (Deep SAD: 5)"""


class KDE:
    name = "kde"
    Config = KDEConfig
    uses_labels = False
    # quick and paper: Deep SAD's 21 bandwidths x 5 folds (~100 cheap fits on digits). small: on ~5,500 CIFAR
    # images those 105 fits took 100 s of one core, so 2^-1 .. 2^5 and 3 folds (39 fits).
    profiles = {"quick": {}, "small": {"log2_bandwidth_min": -1.0, "log2_bandwidth_max": 5.0, "cv_folds": 3},
                "paper": {}}

    def __init__(self, config: KDEConfig, device: torch.device, seed: int):
        self.config = config
        self.seed = int(seed)
        self.pca = None
        self.model: KernelDensity | None = None

    def bandwidths(self) -> np.ndarray:
        cfg = self.config
        return 2.0 ** np.arange(cfg.log2_bandwidth_min, cfg.log2_bandwidth_max + 1e-9, 0.5)

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        self.pca = pixel_pca(cfg.pca_variance, self.seed)
        x = self.pca.fit_transform(flat_pixels(train.images))
        grid = self.bandwidths()
        folds = min(cfg.cv_folds, len(x))
        if len(grid) > 1 and folds >= 2:
            # score = mean held-out log-likelihood per fold; the folds are shuffled from the seed.
            search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": grid},
                                  cv=KFold(folds, shuffle=True, random_state=self.seed), n_jobs=1)
            bandwidth = float(search.fit(x).best_params_["bandwidth"])
        else:
            bandwidth = float(grid[len(grid) // 2])
        self.model = KernelDensity(kernel="gaussian", bandwidth=bandwidth).fit(x)
        # "loss": the mean negative log-likelihood of the training images under the final KDE.
        loss = float(-self.model.score_samples(x).mean())
        if on_epoch is not None:
            on_epoch(1, {"loss": loss})
        return {"epochs": 1, "final_loss": loss, "bandwidth": bandwidth,
                "pca_components": int(self.pca.n_components_), "fit_seconds": time.perf_counter() - t0}

    def score(self, images: torch.Tensor) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("KDE.score() called before fit()")
        return -self.model.score_samples(self.pca.transform(flat_pixels(images)))

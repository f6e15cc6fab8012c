"""Isolation Forest: Liu, Ting, Zhou, "Isolation Forest", ICDM 2008. A baseline of HSCL's Table 2
(unsupervised group), run as the Deep SAD experiments run it (Ruff et al. 2020): scikit-learn's
IsolationForest on flattened pixels in [0, 1] (raw, as Deep SAD's released baselines; optionally after a
PCA keeping `pca_variance` of the variance, methods/pixels.py), with the original paper's t = 100 trees of
psi = 256 sub-samples.

    score(x) = 2^(-E[h(x)] / c(psi))        (isolation score, higher = more anomalous)

Label-free: fitted on the training images the experiment gives it (the labeled anomalies are dropped by
default, Trial.labeled_anomalies), labels ignored. No
hyper-parameter is tuned (the paper's defaults), so no validation part is needed.

Measured (quick profile, 1 CPU thread, busy 2-core machine): fit + score on digits takes 0.2-0.35 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.ensemble import IsolationForest

from methods.base import TrainSet
from methods.pixels import flat_pixels, pixel_pca


@dataclass(frozen=True)
class IForestConfig:
    pca_variance: float = 1.0
    """fraction of the pixel variance a PCA keeps; 1.0: the raw pixels (Deep SAD's baselines)"""
    n_estimators: int = 100
    """t, the number of trees (Liu et al.: 100)"""
    max_samples: int = 256
    """psi, the sub-sample size per tree (Liu et al.: 256); capped at the training set size"""


class IForest:
    name = "iforest"
    Config = IForestConfig
    uses_labels = False
    profiles = {"quick": {}, "small": {}, "paper": {}}  # the paper's t and psi cost well under a second on digits

    def __init__(self, config: IForestConfig, device: torch.device, seed: int):
        self.config = config
        self.seed = int(seed)
        self.pca = None
        self.model: IsolationForest | None = None

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        self.pca = pixel_pca(cfg.pca_variance, self.seed)
        x = self.pca.fit_transform(flat_pixels(train.images))
        self.model = IsolationForest(n_estimators=cfg.n_estimators, max_samples=min(cfg.max_samples, len(x)),
                                     random_state=self.seed, n_jobs=1).fit(x)
        # "loss": nothing is optimised; we report the mean isolation score of the training images.
        loss = float(-self.model.score_samples(x).mean())
        if on_epoch is not None:
            on_epoch(1, {"loss": loss})
        return {"epochs": 1, "final_loss": loss, "pixel_features": int(x.shape[1]),
                "fit_seconds": time.perf_counter() - t0}

    def score(self, images: torch.Tensor) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("IForest.score() called before fit()")
        return -self.model.score_samples(self.pca.transform(flat_pixels(images)))  # 2^(-E h / c) in (0, 1]

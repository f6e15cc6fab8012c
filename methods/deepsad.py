"""Deep SAD: Ruff, Vandermeulen, Goernitz, Binder, Mueller, Mueller, Kloft, "Deep Semi-Supervised
Anomaly Detection", ICLR 2020. A baseline of HSCL's Tables 1 and 2 (semi-supervised group).

Deep SVDD's network and centre c (methods/deepsvdd.py), trained with Eq. (3) of the paper on n
unlabeled images x_i and m labeled images (x~_j, y~_j), y~ = +1 normal, -1 anomaly:

    1/(n+m) sum_i ||phi(x_i) - c||^2  +  eta/(n+m) sum_j (||phi(x~_j) - c||^2 + eps)^(y~_j)

so unlabeled images and labeled normals are pulled to c (the latter with weight eta), and labeled
anomalies are pushed away through the inverse distance. The score is the squared distance to c.
TrainSet.kind uses the same +1 / -1 / 0 convention as the paper's y~.

The same choices as Deep SVDD apply (shared encoder without biases, no autoencoder pre-training);
the centre c is the mean over all training images, labeled ones included, as the authors' code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import TrainSet
from methods.deepsvdd import DeepSVDD, DeepSVDDConfig


@dataclass(frozen=True)
class DeepSADConfig(DeepSVDDConfig):
    eta: float = 1.0
    """weight of the labeled terms in Eq. (3); the paper's default eta = 1"""
    eps: float = 1e-6
    """keeps the inverse distance of a labeled anomaly finite (authors' code)"""


class DeepSAD(DeepSVDD):
    name = "deepsad"
    Config = DeepSADConfig
    uses_labels = True
    profiles = DeepSVDD.profiles  # the same budget as Deep SVDD, so the two compare like for like

    def loss(self, dist: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """Eq. (3) on a batch: dist (B,) squared distances to c, kind (B,) in {0, +1, -1}."""
        cfg = self.config
        labeled = cfg.eta * (dist + cfg.eps) ** kind.to(dist.dtype)  # eta * d for +1, eta / d for -1
        return torch.where(kind == TrainSet.UNLABELED, dist, labeled).mean()

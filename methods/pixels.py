"""Features shared by the classical baselines (OC-SVM, Isolation Forest, KDE), as the Deep SAD
experiments feed them: flattened pixels in [0, 1] (Deep SAD's released baselines: raw pixels), or
optionally a PCA fitted on the training images that keeps a given fraction of the variance. The deep
methods use methods/networks.py instead."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import FunctionTransformer


def flat_pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> float64 (N, C*H*W) in [0, 1]."""
    return images.detach().cpu().reshape(images.shape[0], -1).double().div(255).numpy()


def pixel_pca(variance: float, seed: int) -> PCA | FunctionTransformer:
    """An unfitted feature map: 1.0 keeps the raw pixels (no PCA, Deep SAD's protocol); below 1, a PCA
    keeping `variance` of the variance."""
    if not 0 < variance <= 1:
        raise ValueError(f"pca_variance={variance}: use a fraction in (0, 1]")
    if variance == 1:
        return FunctionTransformer()  # the identity
    return PCA(n_components=variance, svd_solver="full", random_state=seed)

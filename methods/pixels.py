"""Features shared by the classical baselines (OC-SVM, Isolation Forest, KDE), as the Deep SAD
experiments feed them: flattened pixels in [0, 1], then a PCA fitted on the training images that
keeps a given fraction of the variance. The deep methods use methods/networks.py instead."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA


def flat_pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> float64 (N, C*H*W) in [0, 1]."""
    return images.detach().cpu().reshape(images.shape[0], -1).double().div(255).numpy()


def pixel_pca(variance: float, seed: int) -> PCA:
    """An unfitted PCA keeping `variance` (in (0, 1]) of the variance; 1.0 keeps every component."""
    if not 0 < variance <= 1:
        raise ValueError(f"pca_variance={variance}: use a fraction in (0, 1]")
    return PCA(n_components=None if variance == 1 else variance, svd_solver="full", random_state=seed)

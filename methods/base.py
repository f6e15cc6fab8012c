"""What every anomaly-detection method looks like to the runner.

A method is one class in one file (see `methods/hscl.py`), registered by one line in
`methods/registry.py`. The runner builds it as `cls(cls.Config(**params), device, seed)`, where
params are the Config defaults updated by `cls.profiles[profile]` and then by user overrides, so
every Config field is a plain JSON value (str, int, float, bool): the config is data and is hashed.

Convention for all methods: `score()` returns HIGHER = MORE ANOMALOUS. A method whose paper defines
a normality score (e.g. HSCL's Eq. 9) returns its negation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch


@dataclass
class TrainSet:
    """A training set as the runner hands it to `fit`.

    images: uint8 (N, C, H, W), C = 1 or 3, any H, W (8x8 digits, 28x28 MNIST, 32x32 CIFAR).
    kind:   int8 (N,): 0 = unlabeled, +1 = labeled normal, -1 = labeled anomaly (DeepSAD's convention).
    """

    images: torch.Tensor
    kind: torch.Tensor

    UNLABELED: ClassVar[int] = 0
    NORMAL: ClassVar[int] = 1
    ANOMALY: ClassVar[int] = -1

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, C, H, W) with C in (1, 3), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.kind.shape != (self.images.shape[0],):
            raise ValueError(f"kind must have shape ({self.images.shape[0]},), got {tuple(self.kind.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]


class Method(Protocol):
    """The two verbs (fit, score) and the class attributes the runner reads."""

    name: ClassVar[str]
    Config: ClassVar[type]
    profiles: ClassVar[dict[str, dict[str, Any]]]  # e.g. {"quick": {...overrides...}, "paper": {}}
    uses_labels: ClassVar[bool]  # optional, True if absent: False for a method that ignores `kind`

    def __init__(self, config: Any, device: torch.device, seed: int): ...

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Train. Calls on_epoch(epoch, {"loss": float, ...}) after each epoch (epoch = 1, 2, ...).
        Returns a summary with at least {"epochs": int, "final_loss": float}."""
        ...

    def score(self, images: torch.Tensor) -> np.ndarray:
        """uint8 (N, C, H, W) -> float (N,) anomaly scores: HIGHER = MORE ANOMALOUS."""
        ...

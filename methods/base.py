"""What every anomaly-detection method looks like to the runner.

A method is one class in one file (see `methods/hscl.py`), registered by one line in
`methods/registry.py`. The runner builds it as `cls(cls.Config(**params), device, seed)`, where
params are the Config defaults updated by `cls.profiles[profile]` and then by user overrides, so
every Config field is a plain JSON value (str, int, float, bool): the config is data and is hashed.

Convention for all methods: `score()` returns HIGHER = MORE ANOMALOUS. A method whose paper defines
a normality score (e.g. HSCL's Eq. 9) returns its negation.

`NeuralMethod` is what the neural methods share: their network trains through the one loop,
methods/trainer.py, and a method supplies only its network, step loss and, where its paper differs from
the default (Adam, linear warm-up then cosine), its optimiser and schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from methods.augment import normalize, to_float
from methods.optim import make_optimizer, warmup_cosine
from methods.trainer import FitResult, Precision, Schedule, StepLoss, fit, seeded


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


class NeuralMethod:
    """fit() = build the network from the seed, train it with methods.trainer.fit, then `finish`. A subclass
    writes `make_net`, `step_loss` and `score`, and overrides the rest only where its paper says otherwise.
    Its Config has at least net, epochs, batch_size, lr, weight_decay, amp and channels_last."""

    uses_labels = False

    def __init__(self, config: Any, device: torch.device, seed: int):
        """The runner's call. Without a `cpu_bf16` field in the config, amp and channels_last apply on CUDA only."""
        self.config = config
        self.seed = int(seed)
        self.precision = Precision.choose(device, config.amp, config.channels_last, getattr(config, "cpu_bf16", False))
        self.device = self.precision.device
        self.net: nn.Module | None = None

    # ---- what a method provides -------------------------------------------------------------------

    def make_net(self, in_channels: int) -> nn.Module:
        raise NotImplementedError

    def step_loss(self, images: torch.Tensor, kind: torch.Tensor) -> StepLoss:
        """The loss of one step over the training set (uint8 images, int8 kind, both on the device), for
        methods.trainer.fit: (forward, rows, epoch, generator) -> {"loss": total, "loss_<term>": ...}."""
        raise NotImplementedError

    def optimizer(self, params: list) -> torch.optim.Optimizer:
        return make_optimizer("adam", params, self.config.lr, self.config.weight_decay)

    def schedule(self) -> Schedule:
        return warmup_cosine(self.config.warmup_epochs, self.config.epochs)

    def fit_options(self) -> dict:
        """Further keyword arguments of methods.trainer.fit (compile, sync_bn) the config sets."""
        return {}

    def start_epoch(self, epoch: int, images: torch.Tensor) -> None:
        """Called before each epoch (1-based) with the whole training set (uint8, on the device)."""

    def finish(self, images: torch.Tensor, kind: torch.Tensor) -> None:
        """Called once after training with the whole training set: e.g. build the score bank."""

    # ---- the loop, once for all ---------------------------------------------------------------------

    def build_net(self, in_channels: int) -> nn.Module:
        """make_net from the seed, on the CPU (the same weights on any device), placed on the device."""
        return self.precision.place(seeded(lambda: self.make_net(in_channels), self.seed))

    def train_net(self, images: torch.Tensor, kind: torch.Tensor | None,
                  on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
        """Train self.net (built already) on images (N, C, H, W) uint8 on the device."""
        cfg = self.config
        return fit(self.net, self.step_loss(images, kind), images.shape[0], epochs=cfg.epochs,
                   batch_size=cfg.batch_size, seed=self.seed, device=self.device, make_optimizer=self.optimizer,
                   schedule=self.schedule(), start_epoch=lambda epoch: self.start_epoch(epoch, images),
                   on_epoch=on_epoch, **self.fit_options())

    def fit(self, train: TrainSet, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
        """Train from scratch on every training image; on_epoch(epoch, {"loss", "loss_<term>", ..., "lr"}) after
        each epoch. -> methods.trainer.FitResult.summary()."""
        images, kind = train.images.to(self.device), train.kind.to(self.device, torch.int8)
        self.net = self.build_net(images.shape[1])
        summary = self.train_net(images, kind, on_epoch).summary()
        self.finish(images, kind)
        return {**summary, "precision": self.precision.name}

    @torch.no_grad()
    def outputs(self, images: torch.Tensor, rotation: int = 0, chunk: int = 1024) -> list:
        """The network's outputs in eval mode for un-augmented uint8 images (N, C, H, W), turned by rotation * 90
        degrees, one entry per chunk of images."""
        self.require_fit()
        self.net.eval()
        out = []
        for x in images.to(self.device).split(chunk):
            x = torch.rot90(x, rotation, dims=(2, 3)) if rotation else x
            with self.precision.autocast():
                out.append(self.net(self.precision.to_net(normalize(to_float(x)))))
        return out

    def require_fit(self) -> None:
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__}.score() called before fit()")
